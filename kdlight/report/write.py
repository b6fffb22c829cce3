"""A report from run folders: `report.md` (table, scoring settings, failed and missing runs, paired
tests), `report.csv` (every cell's mean and std) and `report.png` (the table's scores per row, and
the average score against training cost). `kdlight-report` and the study runner both call
`write_report`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdlight.io import atomic_path, write_atomic
from kdlight.report.collect import Jobs, collect
from kdlight.report.paired import format_paired, paired_table
from kdlight.report.table import aggregate, is_score, scoring_notes


@dataclass(frozen=True)
class ReportSpec:
    """What a report shows.

    Attributes:
        metrics: metrics.json keys to show (e.g. `eval/ex`, `val/ce`); None: each benchmark's
            table metrics, as its scorer declares them.
        baseline: the row the Δ and step-time columns compare with (same student).
        paired: (A, B) pairs for paired tests on the same examples, pooled over seeds.
        summary: show the average and Δ columns (off for metrics that do not average, like CE).
        fmt: the format of score cells (percentages).
        loss_fmt: the format of other cells (held-out CE, KL).
        title: the Markdown heading.
        order: row labels shown first, in this order (others follow).
    """

    metrics: tuple[str, ...] | None = None
    baseline: str = "sft"
    paired: tuple[tuple[str, str], ...] = ()
    summary: bool = True
    fmt: str = "{:.1f}"
    loss_fmt: str = "{:.3f}"
    title: str = "Comparison"
    order: tuple[str, ...] = field(default=())


class ReportError(ValueError):
    pass


def write_report(folders: list[Path], out: Path, spec: ReportSpec = ReportSpec(),
                 planned: Sequence[Path] = ()) -> str:
    """Collect the runs under `folders`, write report.{md,csv,png} to `out`, return the Markdown.

    `planned`: job folders in the order a study lists its jobs. Their runs come first, in that
    order, so the columns follow the study's order (its data axis, say) rather than the folders'
    alphabetical one; other runs follow.
    """
    jobs = collect(folders)
    position = {Path(folder).resolve(): i for i, folder in enumerate(planned)}
    jobs.finished.sort(key=lambda run: position.get(Path(run["folder"]).resolve(), len(position)))
    if not jobs.finished:
        raise ReportError(f"no finished runs under {', '.join(map(str, folders))} "
                          f"({len(jobs.failed)} failed, {len(jobs.missing)} missing)")
    columns, rows = aggregate(jobs.finished, list(spec.metrics) if spec.metrics else None, spec.baseline)
    rank = {label: i for i, label in enumerate(spec.order)}
    rows.sort(key=lambda r: (rank.get(r["base"], len(rank)), r["method"], r["student"], r["teacher"]))
    text = f"# {spec.title}\n\n" + markdown(columns, rows, jobs, spec)
    if spec.paired:
        text += "\nPaired tests (the same examples, runs paired by seed and pooled):\n\n"
        text += format_paired(paired_table(jobs.finished, list(spec.paired)))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.md", text)
    write_csv(out / "report.csv", columns, rows)
    plot(out / "report.png", columns, rows, spec.baseline)
    return text


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(columns: list[str], rows: list[dict], jobs: Jobs, spec: ReportSpec) -> str:
    head = ["method", "student", "teacher", "seeds", "params", *columns]
    head += ["average", f"Δ vs {spec.baseline}"] if spec.summary else []
    head += ["step (s)", f"step vs {spec.baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [r["method"], r["student"], r["teacher"], str(r["seeds"]), _fmt(r["params"], "{:,}")]
        cells += [r[c].render(spec.fmt if is_score(c) else spec.loss_fmt) if r[c] is not None else "-" for c in columns]
        cells += [_fmt(r["average"], spec.fmt), _fmt(r["delta"], "{:+.1f}")] if spec.summary else []
        cells += [_fmt(r["step_time_s"], "{:.3f}"), _fmt(r["relative_step"], "{:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nCells: mean ± standard deviation over seeds."
    text += " The average is over the score columns (not ceilings or losses).\n" if spec.summary else "\n"
    if split := [r["method"] for r in rows if r.get("split")]:
        text += (f"\nRows shown apart because they hold several runs of one seed with nothing else telling them "
                 f"apart (started from Python, or from other sweeps): {', '.join(split)}\n")
    if notes := scoring_notes(jobs.finished):
        text += "\nScoring:\n" + "".join(f"- {n}\n" for n in notes)
    text += f"\n{len(jobs.finished)} finished runs"
    if jobs.failed:
        text += f"; {len(jobs.failed)} failed:\n" + "".join(f"- {p}: {why}\n" for p, why in jobs.failed)
    if jobs.missing:
        text += f"\n{len(jobs.missing)} missing (no metrics.json, no error.txt: running or killed):\n"
        text += "".join(f"- {p}\n" for p in jobs.missing)
    return text + "\n"


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "student", "teacher", "seeds", "params",
                     *[f"{c} {s}" for c in columns for s in ("mean", "std")],
                     "average", "delta", "step_time_s", "relative_step"])
    for r in rows:
        stats = [v for c in columns for v in ((r[c].mean, r[c].std) if r[c] else (None, None))]
        writer.writerow([r["method"], r["student"], r["teacher"], r["seeds"], r["params"], *stats,
                         r["average"], r["delta"], r["step_time_s"], r["relative_step"]])
    write_atomic(path, buffer.getvalue())


def plot(path: Path, columns: list[str], rows: list[dict], baseline: str) -> None:
    """Left: each row's scores (bars per score column; a table of losses only, such as held-out
    CE and KL, shows those). Right, where rows have an average score: that average against step
    time relative to the baseline, one point per row."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on clusters or CI
    import matplotlib.pyplot as plt

    scores = [c for c in columns if is_score(c)]
    shown = scores or columns  # with scores, losses would be flat bars next to them
    points = [r for r in rows if r["average"] is not None and r["relative_step"] is not None]
    if points:
        fig, (bars, cost) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) + 6), 4.5),
                                         gridspec_kw={"width_ratios": [2, 1]})
    else:
        fig, bars = plt.subplots(1, 1, figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    width = 0.8 / max(1, len(shown))
    for j, column in enumerate(shown):
        values = [r[column].mean if r[column] else 0.0 for r in rows]
        bars.bar([i + j * width for i in range(len(rows))], values, width=width, label=column)
    bars.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [f"{r['method']}\n{r['student']}" for r in rows],
                    fontsize=7)
    if shown:
        bars.legend(fontsize=7)
    bars.set_title("scores (mean over seeds)" if scores else "mean over seeds")
    if points:
        for r in points:
            cost.scatter(r["relative_step"], r["average"])
            cost.annotate(r["method"], (r["relative_step"], r["average"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
        cost.set_xlabel(f"training step time relative to {baseline}")
        cost.set_ylabel("average score")
        cost.set_title("score vs training cost")
    fig.tight_layout()
    with atomic_path(path) as staging:
        fig.savefig(staging, format="png", dpi=120)
    plt.close(fig)
