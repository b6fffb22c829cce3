"""Turn runs' metrics into the comparison table a paper would print, as Markdown, CSV and a chart.

Each row is one run (`metrics.json`); the training step time is given relative to the baseline
row's (the student's SFT step, as in the KID paper's latency column).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Column:
    """One table column: its header, the metrics key it shows, and how to format it."""

    header: str
    key: str
    fmt: str = "{}"

    def render(self, row: dict) -> str:
        value = row.get(self.key)
        return "-" if value is None else self.fmt.format(value)


TEXT2SQL_COLUMNS = (
    Column("method", "label"),
    Column("model", "model"),
    Column("parameters", "params", "{:,}"),
    Column("EX", "eval/ex", "{:.1f}"),
    Column("TS", "eval/ts", "{:.1f}"),
    Column("EM", "eval/em", "{:.1f}"),
    Column("held-out CE", "val/ce", "{:.3f}"),
    Column("step (s)", "step_time_s", "{:.3f}"),
    Column("step vs SFT", "relative_step_time", "{:.2f}x"),
)


def comparison_rows(runs: list[tuple[str, dict]], baseline: str) -> list[dict]:
    """Label each run's metrics and add `relative_step_time` against the run labelled `baseline`."""
    by_label = dict(runs)
    base = by_label.get(baseline, {}).get("step_time_s")
    rows = []
    for label, metrics in runs:
        row = {"label": label, **metrics}
        step = metrics.get("step_time_s")
        row["relative_step_time"] = step / base if step and base else None
        rows.append(row)
    return rows


def format_markdown(rows: list[dict], columns=TEXT2SQL_COLUMNS) -> str:
    header = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(c.render(r) for c in columns) + " |" for r in rows]
    return "\n".join([header, rule, *body]) + "\n"


def write_csv(rows: list[dict], path: Path, columns=TEXT2SQL_COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([c.key if c.key != "label" else "method" for c in columns])
        for row in rows:
            writer.writerow(["" if row.get(c.key) is None else row.get(c.key) for c in columns])


def plot_comparison(rows: list[dict], path: Path, title: str) -> None:
    """Grouped bars of EX and TS per row, with the relative step time written under each label."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on clusters or CI
    import matplotlib.pyplot as plt

    labels = [f"{r['label']}\n({r['relative_step_time']:.1f}x step)" if r.get("relative_step_time")
              else r["label"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    for offset, key, name in ((-0.2, "eval/ex", "EX"), (0.2, "eval/ts", "TS")):
        values = [r.get(key) or 0.0 for r in rows]
        bars = ax.bar([x + offset for x in xs], values, width=0.4, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
