"""`kdlight-report`: one table (Markdown + CSV) and plots from the jobs of sweep folders.

    kdlight-report multirun/2026-11-22/10-00-00 [more folders] [--out DIR] [--baseline sft]
                   [--metrics eval/ex,eval/ts] [--paired kid:sft,kid:gkd_rkl]

Methods are rows; benchmark x metric are columns, then the average, the difference from the
baseline (SFT) and the training step time relative to it; seeds are shown as mean ± std. Failed
and unfinished jobs are listed, so a reader knows what the table is missing. `--paired A:B` adds
McNemar's test of A against B on the same questions, pooled over seeds (kdlight/report/paired.py).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from kdlight.report.paired import format_paired, paired_table
from kdlight.report.sweep import Jobs, aggregate, collect


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(columns: list[str], rows: list[dict], jobs: Jobs, baseline: str, summary: bool = True,
             fmt: str = "{:.1f}") -> str:
    head = ["method", "student", "teacher", "seeds", *columns]
    head += ["average", f"Δ vs {baseline}"] if summary else []
    head += [f"step vs {baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [r["method"], r["student"], r["teacher"], str(r["seeds"])]
        cells += [r[c].render(fmt) if r[c] is not None else "-" for c in columns]
        cells += [_fmt(r["average"], "{:.1f}"), _fmt(r["delta"], "{:+.1f}")] if summary else []
        cells += [_fmt(r["relative_step"], "{:.2f}x")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + f"\n\n{len(jobs.finished)} finished runs"
    if jobs.failed:
        text += f"; {len(jobs.failed)} failed:\n" + "\n".join(f"- {p}: {why}" for p, why in jobs.failed)
    if jobs.missing:
        text += f"\n{len(jobs.missing)} missing (no metrics.json, no error.txt: running or killed):\n"
        text += "\n".join(f"- {p}" for p in jobs.missing)
    return text + "\n"


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "student", "teacher", "seeds", *[f"{c} {s}" for c in columns for s in ("mean", "std")],
                         "average", "delta", "relative_step"])
        for r in rows:
            stats = [v for c in columns for v in ((r[c].mean, r[c].std) if r[c] else (None, None))]
            writer.writerow([r["method"], r["student"], r["teacher"], r["seeds"], *stats,
                             r["average"], r["delta"], r["relative_step"]])


def plot(path: Path, rows: list[dict]) -> None:
    """Average score against training step time relative to SFT, one point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["average"] is not None and r["relative_step"] is not None:
            ax.scatter(r["relative_step"], r["average"])
            ax.annotate(f"{r['method']} ({r['student']})", (r["relative_step"], r["average"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("training step time relative to SFT")
    ax.set_ylabel("average score")
    ax.set_title("score vs training cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where to write report.{md,csv,png} (default: first folder)")
    parser.add_argument("--baseline", default="sft")
    parser.add_argument("--metrics", default="eval/ex,eval/ts", help="comma-separated metrics.json keys")
    parser.add_argument("--summary", action=argparse.BooleanOptionalAction, default=True,
                        help="average and Δ vs baseline columns (--no-summary for metrics that do not average, "
                             "e.g. val/ce,val/kl_from_teacher)")
    parser.add_argument("--format", default=None, help="cell format (default: {:.1f}, or {:.3f} with --no-summary)")
    parser.add_argument("--paired", default="", help="comma-separated A:B method pairs for McNemar's test (EX)")
    args = parser.parse_args(argv)
    pairs = [tuple(p.split(":")) for p in args.paired.split(",") if p]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"--paired takes A:B method pairs separated by commas, got '{args.paired}'")
    jobs = collect(args.folders)
    if not jobs.finished:
        raise SystemExit(f"no finished runs under {', '.join(map(str, args.folders))} "
                         f"({len(jobs.failed)} failed, {len(jobs.missing)} missing)")
    columns, rows = aggregate(jobs.finished, args.metrics.split(","), args.baseline)
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    fmt = args.format or ("{:.1f}" if args.summary else "{:.3f}")
    text = markdown(columns, rows, jobs, args.baseline, args.summary, fmt)
    if pairs:
        text += "\nPaired test on execution accuracy (same questions, same seeds, pooled):\n\n"
        text += format_paired(paired_table(jobs.finished, pairs))
    (out / "report.md").write_text(text)
    write_csv(out / "report.csv", columns, rows)
    plot(out / "report.png", rows)
    print(text + f"\nwritten: {out}/report.{{md,csv,png}}")


if __name__ == "__main__":
    main()
