"""The default study: distil a text-to-SQL student from a teacher on CPU, and print the table.

Stages (each one `kdlight-train` run, in its own folder under the study folder):
  teacher      fine-tune the teacher (llama-m) with SFT
  student_init SFT the student (llama-xs): the warm start that stands in for pre-training
               (reverse KL from a random start collapses at this scale)
  sft|fkd|rkd  continue from student_init for the same number of steps with each method,
               distilling from the one teacher checkpoint; `sft` is the no-teacher baseline
then writes comparison.md, comparison.csv and comparison.png in the study folder.

A finished stage (its metrics.json exists) is not run again, so re-running the same command after
an interruption resumes the study. Extra arguments are Hydra overrides for every stage, e.g.
    python experiments/text2sql_tiny/run.py --out outputs/study trainer.max_steps=50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from kdlight.report.table import comparison_rows, format_markdown, plot_comparison, write_csv

EXPERIMENT = "experiment=text2sql_tiny"
TEACHER_STEPS = 400  # the teacher trains longer than one student stage: it only runs once
STUDENT_INIT_STEPS = 900
METHOD_STEPS = 300
METHODS = ("sft", "fkd", "rkd")


def stages(out: Path) -> list[tuple[str, list[str]]]:
    """(name, overrides) in the order they must run."""
    teacher, init = out / "teacher" / "model", out / "student_init" / "model"
    plan = [("teacher", ["stage=teacher", "method=sft", f"trainer.max_steps={TEACHER_STEPS}"]),
            # one tokenizer for the whole study: the teacher's
            ("student_init", ["method=sft", f"tokenizer.path={teacher}", f"trainer.max_steps={STUDENT_INIT_STEPS}"])]
    for method in METHODS:
        plan.append((method, [f"method={method}", f"teacher.path={teacher}", f"student.path={init}",
                              f"trainer.max_steps={METHOD_STEPS}", "loop.warmup_steps=10"]))
    return plan


def run_stage(name: str, overrides: list[str], out: Path, extra: list[str]) -> dict:
    folder = out / name
    metrics = folder / "metrics.json"
    if metrics.exists():
        print(f"== {name}: done earlier, reusing {metrics}", flush=True)
        return json.loads(metrics.read_text())
    print(f"\n== {name}: kdlight-train {' '.join(overrides + extra)}", flush=True)
    command = [sys.executable, "-m", "kdlight.cli.train", EXPERIMENT, f"hydra.run.dir={folder}", *overrides, *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"== {name}: finished in {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads(metrics.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="study folder (default: outputs/text2sql_tiny/<time>)")
    args, extra = parser.parse_known_args()
    out = args.out or Path("outputs/text2sql_tiny") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [(name, run_stage(name, overrides, out, extra)) for name, overrides in stages(out)]
    labels = {"teacher": "teacher (sft)", "student_init": "student warm start (sft)"}
    rows = comparison_rows([(labels.get(n, n), m) for n, m in results], baseline="sft")
    table = format_markdown(rows)
    (out / "comparison.md").write_text(
        f"# Text-to-SQL distillation, tiny scale (generated data, {rows[-1].get('eval/n')} dev questions)\n\n"
        f"EX/TS/EM in %, test-suite comparator; step time relative to the student's SFT step.\n\n{table}")
    write_csv(rows, out / "comparison.csv")
    plot_comparison(rows, out / "comparison.png", "text-to-SQL distillation (tiny, CPU)")
    print(f"\n{table}\nstudy finished in {time.perf_counter() - started:.0f}s; "
          f"table, CSV and chart in {out}/comparison.{{md,csv,png}}")


if __name__ == "__main__":
    main()
