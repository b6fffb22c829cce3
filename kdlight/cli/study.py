"""`kdlight-study`: run a study (conf/study/<name>.yaml): its stages of jobs, then its reports.

    kdlight-study study=text2sql_tiny                        # the default study (make study)
    kdlight-study study=kid_text2sql hydra/launcher=slurm    # every stage's jobs as SLURM jobs
    kdlight-study study=kid_text2sql study.axes.seed=[0,1] trainer.max_steps=50
    kdlight-study study=text2sql_tiny hydra.sweeper.dry_run=true   # list the jobs, run nothing

Results go to outputs/studies/<name> (or hydra.sweep.dir=...). Running the same command again
runs only what is unfinished: finished jobs are kept, interrupted ones resume from their last
checkpoint. Other overrides apply to every job.
"""

from __future__ import annotations

import sys

from kdlight.cli.train import main as train_main


def study_arguments(argv: list[str]) -> list[str]:
    """kdlight-train's multirun arguments for a study: the study sweeper, and the study's folder."""
    names = [a.split("=", 1)[1] for a in argv if a.startswith("study=")]
    if not names:
        raise SystemExit(__doc__ + "\nerror: name a study: kdlight-study study=<name>")
    extra = ["hydra/sweeper=kdlight_study"]
    if not any(a.startswith("hydra.sweep.dir=") for a in argv):
        extra.append(f"hydra.sweep.dir=outputs/studies/{names[-1]}")
    return ["-m", *extra, *argv]


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    sys.argv = [sys.argv[0], *study_arguments(sys.argv[1:])]
    train_main()


if __name__ == "__main__":
    main()
