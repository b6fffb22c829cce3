"""`kdlight-train`: train one model with one method, then evaluate it.

    kdlight-train method=rkd model@teacher=llama-m model@student=llama-xs \
        teacher.path=<teacher run>/model student.path=<student sft run>/model
    kdlight-train stage=teacher method=sft model@teacher=llama-m     # fine-tune a teacher
    kdlight-train -m method=sft,fkd,rkd model@student=llama-xs,llama-s

The config becomes a typed `Run` in one function (`kdlight.config.build_run`); `kdlight.run.train`
does the rest. A failed job writes its traceback to `error.txt` in its folder; in a multirun the
sweep goes on with the next job.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kdlight.config.build import build_budgeted, build_run
from kdlight.io import FAILURE_FILE, write_atomic
from kdlight.pipelines.baldistill import distill_under_budget
from kdlight.run.train import train as train_run
from kdlight.training.teacher_store import publish_teacher, stored_teacher

log = logging.getLogger(__name__)


def job_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's folder name from its overrides (Hydra's `override_dirname`): no path values
    (their slashes would nest folders) and at most `limit` characters (file systems allow 255),
    the rest replaced by a short hash so that names stay distinct."""
    name = ",".join(item for item in overrides.split(",") if "/" not in item)
    if len(name) > limit:
        name = f"{name[: limit - 9]}-{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"
    return name


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_group() -> str:
    """A W&B group: the sweep's folder for a sweep job, the run's own folder for a single run."""
    return HydraConfig.get().sweep.dir if _multirun() else HydraConfig.get().runtime.output_dir


def run_name(base: str) -> str:
    """A W&B run name: `base`, and for a sweep job its overrides (as in its folder's name), which
    tell it from the sweep's other jobs."""
    overrides = job_dirname(HydraConfig.get().job.override_dirname) if _multirun() else ""
    return f"{base} [{overrides}]" if overrides else base


def gpus_per_node(accelerator: str, devices: int) -> int | None:
    """The GPUs a SLURM job asks for per node: the trainer's devices, except on a CPU trainer
    (whose devices are processes, each given CPUs by `cpus_per_task`), which asks for none: None
    leaves the request out of the submission (`--gpus-per-node=0` is refused by some clusters)."""
    return None if str(accelerator) == "cpu" else int(devices)


OmegaConf.register_new_resolver("kd_dirname", job_dirname, replace=True)
OmegaConf.register_new_resolver("kd_gpus_per_node", gpus_per_node, replace=True)
OmegaConf.register_new_resolver("kd_run_group", run_group, replace=True)
OmegaConf.register_new_resolver("kd_run_name", run_name, replace=True)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def train(cfg: DictConfig) -> dict:
    """Build the run the config describes, train, evaluate; returns the final metrics."""
    output_dir = Path(cfg.paths.output_dir)
    failed = True
    try:
        if cfg.get("policy") is not None:  # budgeted distillation: stages of runs in this folder
            result = distill_under_budget(build_budgeted(cfg), output_dir)
        else:
            result = train_run(build_run(cfg), output_dir)
        if cfg.stage == "teacher" and result.metrics and not result.reused:  # metrics only on rank 0
            store = publish_teacher(output_dir / "model", stored_teacher(cfg.paths.teachers_dir, cfg.data_name,
                                                                         result.metrics["model"]))
            log.info(f"teacher published to {store} (use teacher_from_store=true in student runs)")
        failed = False
        (output_dir / FAILURE_FILE).unlink(missing_ok=True)  # a re-run that succeeds is no longer failed
        return result.metrics
    finally:
        _finish_wandb(failed)


def optimized_value(cfg: DictConfig, metrics: dict) -> float | None:
    """What a sweeper maximises: `optimized_metric`, or the first table metric of the run's own
    evaluation split (e.g. `eval/ex` for text-to-SQL)."""
    key = cfg.optimized_metric
    if key is None and metrics.get("benchmarks"):
        first = metrics["benchmarks"][0]
        key = f"{first['prefix']}/{first['metrics'][0]}" if first["metrics"] else None
    return metrics.get(key) if key else None


def _finish_wandb(failed: bool) -> None:
    """Always close a W&B run, also on failure, so the next job of a multirun starts cleanly."""
    wandb = sys.modules.get("wandb")  # imported only if the wandb logger was used
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    log.info("config:\n" + OmegaConf.to_yaml(cfg, resolve=True))
    try:
        metrics = train(cfg)
    except Exception as error:
        record_failure(Path(cfg.paths.output_dir), error)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # One failed job must not stop a sweep.
        log.error("the sweep goes on with the next job")
        return None
    return optimized_value(cfg, metrics)


def record_failure(output_dir: Path, error: BaseException) -> None:
    """The traceback in the job's folder, so a report lists the job as failed (not as running)."""
    write_atomic(output_dir / FAILURE_FILE, "".join(traceback.format_exception(error)))
    log.error(f"job failed: {type(error).__name__}: {error} (traceback in {output_dir / FAILURE_FILE})")


if __name__ == "__main__":
    main()
