"""`kdlight-train`: train one model with one method, then evaluate it.

    kdlight-train method=rkd model@teacher=llama-m model@student=llama-xs \
        teacher.path=<teacher run>/model student.path=<student sft run>/model
    kdlight-train stage=teacher method=sft model@teacher=llama-m     # fine-tune a teacher
    kdlight-train -m method=sft,fkd,rkd model@student=llama-xs,llama-s

`train(cfg)` is the only function that reads the config; it builds typed components and hands
them over. Tests call it directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from kdlight.data.tokenizer import has_tokenizer, load_tokenizer
from kdlight.models.build import ModelSpec, build_model, count_parameters
from kdlight.models.vocab import ModelVocab, add_mask_token, shared_vocab_size
from kdlight.training.module import DistillationModule
from kdlight.training.run import fit_and_evaluate, resolve_tokenizer
from kdlight.training.teacher_store import publish_teacher, require_stored_teacher, stored_teacher

log = logging.getLogger(__name__)


def job_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's folder name from its overrides (Hydra's `override_dirname`): no path values
    (their slashes would nest folders) and at most `limit` characters (file systems allow 255),
    the rest replaced by a short hash so that names stay distinct."""
    name = ",".join(item for item in overrides.split(",") if "/" not in item)
    if len(name) > limit:
        name = f"{name[: limit - 9]}-{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"
    return name


OmegaConf.register_new_resolver("kd_dirname", job_dirname, replace=True)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
FAILURE_FILE = "error.txt"  # written in a multirun job's folder when the job fails


def train(cfg: DictConfig) -> dict:
    """Build everything the config names, train, evaluate; returns the final metrics."""
    output_dir = Path(cfg.paths.output_dir)
    if cfg.skip_finished and (output_dir / "metrics.json").exists():
        log.info(f"{output_dir} already has metrics.json (skip_finished=true): not run again")
        return json.loads((output_dir / "metrics.json").read_text())
    L.seed_everything(cfg.seed, workers=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    method = instantiate(cfg.method, _convert_="object")
    trained, teacher_spec = _model_specs(cfg, method.needs_teacher or (cfg.stage == "student" and cfg.teacher_kl))
    datamodule = instantiate(cfg.data, _convert_="object")
    datamodule.prepare_data()
    datamodule.load()
    tokenizer = resolve_tokenizer(instantiate(cfg.tokenizer), [s for s in (trained, teacher_spec) if s],
                                  datamodule.training_texts(), output_dir / "tokenizer")
    datamodule.connect(tokenizer)
    benchmarks = _benchmarks(cfg)
    student = build_model(trained, tokenizer)
    teacher = build_model(teacher_spec, tokenizer) if teacher_spec else None
    vocab_size = shared_vocab_size(tokenizer, _vocab_entries(cfg.stage, trained, student, teacher_spec, teacher))
    if getattr(method.source, "needs_mask_token", False) and add_mask_token(tokenizer, [m for m in (student, teacher) if m]):
        vocab_size = len(tokenizer)
        log.info(f"the tokenizer had no mask token: added {tokenizer.mask_token} (id {tokenizer.mask_token_id}) for "
                 f"{method.name}; it is saved with the student's tokenizer")
    module = DistillationModule(student, method, tokenizer, vocab_size, instantiate(cfg.optimizer),
                                instantiate(cfg.loop), teacher, seed=cfg.seed)
    logger = instantiate(cfg.logger) if cfg.logger else False
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks, plugins=_plugins(cfg))
    for experiment_logger in trainer.loggers:  # the whole resolved config, so every run says what it was
        experiment_logger.log_hyperparams(_resolved(cfg))
    identity = {"method": method.name, "stage": cfg.stage, "model": trained.name, "data": cfg.data_name,
                "seed": cfg.seed, "teacher": teacher_spec.name if teacher_spec else None,
                "teacher_params": count_parameters(teacher) if teacher is not None else None}
    log.info(f"{cfg.stage} {trained.name} ({count_parameters(student):,} parameters) with {method.name}"
             + (f", teacher {teacher_spec.name} ({identity['teacher_params']:,})" if teacher_spec else ""))
    failed = True
    try:
        metrics = fit_and_evaluate(module, trainer, datamodule, output_dir, identity, benchmarks)
        if cfg.stage == "teacher" and trainer.is_global_zero:
            store = publish_teacher(output_dir / "model", stored_teacher(cfg.paths.teachers_dir, cfg.data_name, trained.name))
            log.info(f"teacher published to {store} (use teacher_from_store=true in student runs)")
        failed = False
        return metrics
    finally:
        _finish_wandb(failed)


def _benchmarks(cfg: DictConfig) -> dict:
    """Extra evaluation-only benchmarks, read now so a missing copy fails before training, not after."""
    benchmarks = {}
    for name, spec in (cfg.benchmarks or {}).items():
        benchmarks[name] = instantiate(spec, _convert_="object")
        try:
            benchmarks[name].prepare_data()
            benchmarks[name].load()
        except (FileNotFoundError, KeyError, ValueError) as error:
            raise type(error)(f"benchmark '{name}': {error}; for a benchmark that is benchmarks.{name}.source.root, "
                              "or KDLIGHT_DATA for every copy") from error
    return benchmarks


def _plugins(cfg: DictConfig) -> list:
    """Trainer plugins from the config, plus the SLURM requeue owner.

    Under SLURM both Lightning (SLURMEnvironment) and the submitit launcher can requeue a job that
    reaches its time limit; two owners requeue it twice. With `requeue_owner=launcher` (default)
    Lightning's auto-requeue is off and submitit requeues (`hydra.launcher.max_num_timeout`); the
    job re-runs in the same folder and resumes from checkpoints/last.ckpt. Use
    `requeue_owner=lightning` for plain `sbatch` scripts without the launcher.
    """
    plugins = [instantiate(p) for p in cfg.trainer.plugins or []]
    if cfg.requeue_owner not in ("launcher", "lightning"):
        raise ValueError(f"requeue_owner must be 'launcher' or 'lightning', got '{cfg.requeue_owner}'")
    if cfg.requeue_owner == "launcher" and SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def _resolved(cfg: DictConfig) -> dict:
    """The run's config as plain data, without Hydra's own section."""
    return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in cfg.items() if key != "hydra"}


def _model_specs(cfg: DictConfig, needs_teacher: bool) -> tuple[ModelSpec, ModelSpec | None]:
    """The model to train and the frozen teacher (if the method needs one, or `teacher_kl` asks
    for the student's held-out KL from it)."""
    if cfg.stage == "teacher":
        if needs_teacher:
            raise ValueError(f"stage=teacher fine-tunes the teacher on its own, so the method must need no "
                             f"teacher (use method=sft); got method={cfg.method.name}")
        return instantiate(cfg.teacher), None
    if cfg.stage != "student":
        raise ValueError(f"stage must be 'teacher' or 'student', got '{cfg.stage}'")
    teacher = instantiate(cfg.teacher) if needs_teacher else None
    if teacher is not None and cfg.teacher_from_store:
        store = stored_teacher(cfg.paths.teachers_dir, cfg.data_name, teacher.name)
        teacher = replace(teacher, path=str(require_stored_teacher(store, cfg.data_name, teacher.name)))
    if teacher is not None and teacher.path is None:
        log.warning(f"method {cfg.method.name} distils from a randomly initialised teacher: set "
                    "teacher.path=<teacher run>/model to distil from a trained one")
    return instantiate(cfg.student), teacher


def _vocab_entries(stage, trained, student, teacher_spec, teacher) -> list[ModelVocab]:
    def own(spec: ModelSpec):
        return load_tokenizer(spec.path) if has_tokenizer(spec.path) else None

    entries = [ModelVocab(stage, student, own(trained))]
    if teacher is not None:
        entries.append(ModelVocab("teacher", teacher, own(teacher_spec)))
    return entries


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
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # One failed job must not stop a sweep: record why in the job's folder and go on.
        _record_failure(Path(cfg.paths.output_dir), error)
        return None
    return metrics.get(cfg.optimized_metric)


def _record_failure(output_dir: Path, error: Exception) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / FAILURE_FILE).write_text("".join(traceback.format_exception(error)))
    log.error(f"job failed: {type(error).__name__}: {error} (traceback in {output_dir / FAILURE_FILE}); "
              "the sweep goes on with the next job")


if __name__ == "__main__":
    main()
