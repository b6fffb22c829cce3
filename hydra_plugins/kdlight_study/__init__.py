"""kdlight's study runner as a Hydra sweeper, so a study's jobs go through Hydra's launchers
(basic, local submitit, SLURM) like any sweep. The logic lives in `kdlight.pipelines.study`; this
module only connects it to Hydra (which finds sweepers in the `hydra_plugins` package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from kdlight.io import FAILURE_FILE, write_atomic
from kdlight.pipelines.study import StudyError, StudyPlan, run_study


class StudySweeper(Sweeper):
    """Runs the stages of `cfg.study` one after another, each through the configured launcher.

    Args:
        dry_run: print every job's overrides and whether it is finished; run nothing.
    """

    def __init__(self, dry_run: bool = False):
        self.dry_run = dry_run
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        if self.config.get("study") is None:
            raise StudyError("no study selected: kdlight-study study=<name> (the options are in conf/study/)")
        plan = StudyPlan.from_config(self.config.study)
        root = Path(self.config.hydra.sweep.dir)
        write_atomic(root / "multirun.yaml", OmegaConf.to_yaml(self.config))  # as Hydra's own sweeper does
        failed = run_study(plan, root, arguments, lambda jobs, first: self.launcher.launch(jobs, initial_job_idx=first),
                           self.dry_run)
        if failed:
            raise StudyError(f"study {plan.name}: {len(failed)} job(s) failed (listed in the report): "
                             + "; ".join(str(job.folder / FAILURE_FILE) for job in failed))
