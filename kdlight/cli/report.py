"""`kdlight-report`: one table (Markdown + CSV) and a chart from the runs under some folders.

    kdlight-report multirun/2026-11-22/10-00-00 [more folders] [--out DIR] [--baseline sft]
                   [--metrics eval/ex,eval/ts] [--paired kid:sft,kid:gkd_rkl] [--no-summary]

Rows are methods (runs differing only in seed are one row, mean ± std); columns are benchmark x
metric (by default the metrics each benchmark's scorer declares), then the average, the difference
from the baseline (SFT) and the training step time relative to it. Failed and unfinished runs are
listed, so a reader knows what the table is missing; how each benchmark was scored is named.
`--paired A:B` adds a paired test of A against B on the same examples, pooled over seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdlight.report.paired import parse_pairs
from kdlight.report.write import ReportError, ReportSpec, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write report.{md,csv,png} (default: the first folder)")
    parser.add_argument("--baseline", default="sft")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metrics.json keys (default: each benchmark's table metrics)")
    parser.add_argument("--summary", action=argparse.BooleanOptionalAction, default=True,
                        help="average and Δ vs baseline columns (--no-summary for metrics that do not average, "
                             "e.g. val/ce,val/kl_from_teacher)")
    parser.add_argument("--format", default="{:.1f}", help="format of score cells (default: {:.1f}; losses: {:.3f})")
    parser.add_argument("--paired", default="", help="comma-separated A:B method pairs for paired tests")
    parser.add_argument("--title", default="Comparison")
    args = parser.parse_args(argv)
    try:
        pairs = parse_pairs(args.paired)
    except ValueError as error:
        raise SystemExit(f"--paired: {error}") from error
    spec = ReportSpec(tuple(args.metrics.split(",")) if args.metrics else None, args.baseline, pairs, args.summary,
                      args.format, title=args.title)
    out = args.out or args.folders[0]
    try:
        text = write_report(args.folders, out, spec)
    except ReportError as error:
        raise SystemExit(str(error)) from error
    print(text + f"\nwritten: {out}/report.{{md,csv,png}}")


if __name__ == "__main__":
    main()
