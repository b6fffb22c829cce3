"""KID's text-to-SQL comparison: methods x teacher sizes x student x seeds, then the tables.

    python experiments/kid_text2sql/run.py                      # tiny scale, this machine (CPU)
    python experiments/kid_text2sql/run.py --scale paper --launcher slurm   # the paper's setting
    python experiments/kid_text2sql/run.py --dry-run            # print the commands only

Per dataset, three steps, each one `kdlight-train` run or multirun in its own folder:
  student_init  SFT of the student: the warm start every method continues from (it stands in for
                the pretraining the papers assume) and the tokenizer every model shares; only for
                models trained from scratch (`--scale tiny`); pretrained students start as they are
  teachers      SFT of each teacher size (`stage=teacher`), published to <out>/teachers
  methods       every method x teacher size x seed, continuing from student_init for the same
                number of steps with the same data order per seed; `sft` is the baseline and also
                reports its held-out KL from the teacher (`teacher_kl=true`)
then `kdlight-report` writes, in <out>/report:
  report.md     KID Tables 3-4 layout (EX/TS per benchmark, average, Δ vs SFT, step time vs SFT)
                and McNemar's paired tests for the comparisons the paper's claims rest on
  diagnostics.md  held-out cross-entropy and KL from the teacher per dataset
Every job has `skip_finished=true` and resumes from its last checkpoint, so running the same
command again after an interruption (or a SLURM time-out) only does what is left.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from kdlight.cli.report import main as report

METHODS = ("sft", "fkd", "rkd", "imitkd", "gkd_rkl", "fdistill", "seqkd", "kid")
# The paper's claims: KID beats SFT and is close to GKD at a fraction of its cost; RKL-based
# methods beat FKL-based ones; the imperfect rewrite adds to reverse KL on gold.
PAIRS = ("kid:sft", "kid:gkd_rkl", "rkd:fkd", "gkd_rkl:imitkd", "kid:rkd", "fkd:sft")


@dataclass(frozen=True)
class Scale:
    """One setting of the study.

    Attributes:
        datasets: data configs, each trained on and evaluated separately, with overrides of its own.
        benchmarks: extra evaluation-only benchmarks (conf/benchmark) for every method run.
        teachers, student: model configs.
        seeds: seeds of the method runs.
        common: overrides of every run.
        teacher_steps, init_steps, method_steps: training steps of each step (None: the config's).
        method_overrides: overrides of the method runs only.
        warm_start: SFT the student first and start every method from it (models trained from
            scratch); False: every method starts from the student's pretrained weights, as in
            the paper, and models keep their own tokenizer.
    """

    datasets: dict[str, tuple[str, ...]]
    benchmarks: tuple[str, ...]
    teachers: tuple[str, ...]
    student: str
    seeds: tuple[int, ...]
    common: tuple[str, ...]
    teacher_steps: int | None
    init_steps: int | None
    method_steps: int | None
    method_overrides: tuple[str, ...] = ()
    warm_start: bool = True


SCALES = {
    # 2 CPU cores: ~1M-parameter teacher, ~60k student, from scratch. The generated data is
    # capacity-limited at this size (the teacher is far better than the student); GeoQuery is not
    # (README.md).
    # GeoQuery has one database, so its schema is the same in every prompt: without it prompts are
    # ~45 tokens instead of ~260, which is what makes three seeds of every method fit in the time.
    "tiny": Scale(datasets={"sqlgen": (), "geoquery": ("data.prompt.schema=false",)}, benchmarks=(), teachers=("llama-m",), student="llama-xs",
                  seeds=(0, 1, 2), common=("experiment=text2sql_tiny",),
                  teacher_steps=400, init_steps=900, method_steps=300,
                  method_overrides=("loop.warmup_steps=10",)),
    # KID's Qwen setting (METHODS.md §3): Qwen1.5-0.5B student, 1.8B/4B/7B teachers fine-tuned on
    # Spider first, evaluated on the five benchmarks. Model folders under paths.models_dir.
    "paper": Scale(datasets={"spider": ()}, benchmarks=("spider_dk", "spider_realistic", "spider_syn", "bird",
                                                     "bird_evidence"),
                   teachers=("qwen1.5-1.8b", "qwen1.5-4b", "qwen1.5-7b"), student="qwen1.5-0.5b",
                   seeds=(0, 1, 2), common=("experiment=kid_paper",),
                   teacher_steps=None, init_steps=None, method_steps=None, warm_start=False),
}


def steps(n: int | None) -> list[str]:
    return [f"trainer.max_steps={n}"] if n else []


def plan(scale: Scale, out: Path, data: str, methods: tuple[str, ...] = METHODS) -> list[tuple[str, list[str]]]:
    """(step name, kdlight-train arguments) for one dataset, in order."""
    folder, teachers = out / data, out / "teachers"
    common = [*scale.common, f"data={data}", *scale.datasets[data], f"model@student={scale.student}",
              f"paths.teachers_dir={teachers}", "skip_finished=true"]
    init = folder / "student_init"
    benchmarks = [f"+benchmark@benchmarks.{b}={b}" for b in scale.benchmarks]
    # From scratch, the student's SFT run is the warm start and its tokenizer is everyone's.
    start = [f"student.path={init / 'model'}"] if scale.warm_start else []
    shared_tokenizer = [f"tokenizer.path={init / 'model'}"] if scale.warm_start else []
    steps_ = [
        ("teachers", ["-m", *common, "stage=teacher", "method=sft", f"model@teacher={','.join(scale.teachers)}",
                      *shared_tokenizer, *steps(scale.teacher_steps), f"hydra.sweep.dir={folder / 'teachers'}"]),
        ("methods", ["-m", *common, f"method={','.join(methods)}", f"model@teacher={','.join(scale.teachers)}",
                     f"seed={','.join(map(str, scale.seeds))}", *start,
                     "teacher_from_store=true", "teacher_kl=true", *steps(scale.method_steps),
                     *scale.method_overrides, *benchmarks, f"hydra.sweep.dir={folder / 'methods'}",
                     "hydra.sweep.subdir=${hydra.job.num}_${method.name}_${teacher.name}_seed${seed}"]),
    ]
    if scale.warm_start:
        steps_.insert(0, ("student_init", [*common, "method=sft", *steps(scale.init_steps), f"hydra.run.dir={init}"]))
    return steps_


def run(name: str, arguments: list[str], extra: list[str], dry_run: bool) -> None:
    command = [sys.executable, "-m", "kdlight.cli.train", *arguments, *extra]
    print(f"\n== {name}: {' '.join(command[2:])}", flush=True)
    if dry_run:
        return
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"== {name}: finished in {time.perf_counter() - started:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default: outputs/kid_text2sql/<time>)")
    parser.add_argument("--launcher", choices=("basic", "local", "slurm"), default="basic",
                        help="basic: one job after another here; local/slurm: submitit (cluster settings in "
                             "conf/local/default.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method configs")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the scale's)")
    parser.add_argument("--datasets", default=None, help="comma-separated data configs (default: the scale's)")
    parser.add_argument("--teachers", default=None, help="comma-separated teacher model configs (default: the scale's)")
    args, extra = parser.parse_known_args(argv)
    scale = SCALES[args.scale]
    if args.seeds:
        scale = replace(scale, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.teachers:
        scale = replace(scale, teachers=tuple(args.teachers.split(",")))
    if args.datasets:
        scale = replace(scale, datasets={d: scale.datasets.get(d, ()) for d in args.datasets.split(",")})
    methods = tuple(args.methods.split(","))
    out = (args.out or Path("outputs/kid_text2sql") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    if args.launcher != "basic":
        extra = [f"hydra/launcher={args.launcher}", *extra]
    started = time.perf_counter()
    for data in scale.datasets:
        for name, arguments in plan(scale, out, data, methods):
            # The launcher applies to multiruns; a single run always runs here.
            run(f"{data} {name}", arguments, extra if "-m" in arguments else
                [e for e in extra if not e.startswith("hydra/launcher=")], args.dry_run)
    if args.dry_run:
        return
    sweeps = [str(out / data / "methods") for data in scale.datasets]
    report([*sweeps, "--out", str(out / "report"), "--metrics", "eval/ex,eval/ts", "--paired", ",".join(PAIRS)])
    report([*sweeps, "--out", str(out / "report" / "diagnostics"), "--metrics", "val/ce,val/kl_from_teacher",
            "--no-summary"])
    print(f"study finished in {time.perf_counter() - started:.0f}s; tables in {out / 'report'}")


if __name__ == "__main__":
    main()
