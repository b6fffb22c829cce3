"""The one place where a Hydra config becomes typed components (a `Run` or an `EvalRun`).

Everything past this module takes typed arguments. A key that no config file defines fails at
composition (Hydra's struct mode); a wrong value fails when its component is built here.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from kdlight.eval.answers import parse_answer
from kdlight.models.build import ModelSpec
from kdlight.models.decoding import Decoding
from kdlight.pipelines.baldistill import BudgetedDistillation
from kdlight.selection.annotators import LocalTeacherDecoder, ModelAnnotator, StoredAnnotator
from kdlight.run.evaluate import EvalRun
from kdlight.run.spec import Run
from kdlight.tasks.longtail.task import LongTailTask
from kdlight.training.teacher import StoredTeacherSpec
from kdlight.training.teacher_store import require_stored_teacher, stored_teacher

log = logging.getLogger(__name__)

REQUEUE_OWNERS = ("launcher", "lightning")


def build_run(cfg: DictConfig) -> Run:
    """The `Run` a `kdlight-train` config describes."""
    method = instantiate(cfg.method, _convert_="object")
    trained, teacher = _models(cfg, method.needs_teacher or (cfg.stage == "student" and cfg.teacher_kl))
    return Run(
        data=instantiate(cfg.data, _convert_="object"),
        student=trained,
        method=method,
        teacher=teacher,
        benchmarks=_benchmarks(cfg),
        tokenizer=instantiate(cfg.tokenizer),
        optimizer=instantiate(cfg.optimizer),
        loop=instantiate(cfg.loop),
        trainer=instantiate(cfg.trainer, _convert_="all"),
        logger=instantiate(cfg.logger) if cfg.logger else None,
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        plugins=slurm_plugins(cfg.requeue_owner),
        seed=cfg.seed,
        threads=cfg.threads,
        checkpoint_every_n_steps=cfg.checkpoint_every_n_steps,
        select_by=cfg.select_by,
        teacher_kl=cfg.teacher_kl and cfg.stage == "student",
        teacher_cache=instantiate(cfg.teacher_cache) if cfg.teacher_cache.top_k is not None else None,
        skip_finished=cfg.skip_finished,
        data_name=cfg.data_name,
        label=cfg.label,
        stage=cfg.stage,
        config=resolved(cfg),
    )


def build_budgeted(cfg: DictConfig) -> BudgetedDistillation:
    """The budgeted distillation a `kdlight-train policy=<name>` config describes: the policy, every
    stage's training run (`build_run`), and the teacher that annotates (stored rationales named by
    `rationales=<name>`, else the saved model `teacher.path`)."""
    policy = instantiate(cfg.policy)
    if cfg.stage != "student":
        raise ValueError(f"policy={policy.name} trains students on what it buys; stage=teacher fine-tunes a teacher "
                         "(without a policy)")
    run = replace(build_run(cfg), label=cfg.label or policy.name)
    if run.method.needs_teacher:
        raise ValueError(f"policy={policy.name}: each stage's student learns from the teacher's rationales (sequence-level "
                         f"KD) with a method that needs no teacher model (method=sft), got method={run.method.name}")
    task = run.data.task
    if not isinstance(task, LongTailTask):
        raise ValueError(f"policy={policy.name} selects examples by domain from a long-tail task (data=ltgen, r52, math, "
                         f"mcqa, gsm8k), got data={cfg.data_name} ({type(task).__name__})")
    annotator = None
    if policy.needs_teacher and cfg.get("rationales"):
        annotator = StoredAnnotator(instantiate(cfg.rationales, _convert_="object"))
    elif policy.needs_teacher:
        _, teacher = _models(cfg, needs_teacher=True)  # teacher.path, or the store's (teacher_from_store=true)
        if not isinstance(teacher, ModelSpec) or teacher.path is None:
            raise ValueError(f"policy={policy.name} needs a teacher that writes rationales: a trained model "
                             "(teacher.path=<teacher run>/model) or stored outputs (rationales=<name>, conf/rationales/)")
        on_gpu = run.trainer.get("accelerator") != "cpu" and torch.cuda.is_available()
        decoder = LocalTeacherDecoder(teacher, run.data.max_prompt_tokens, run.data.max_target_tokens,
                                      run.data.eval_batch_size, device="cuda" if on_gpu else "cpu")
        parse = partial(parse_answer, kind=task.kind, labels=task.source.labels())
        annotator = ModelAnnotator(decoder, task.format_prompt, parse, name=teacher.name,
                                   synthesis=Decoding(strategy="sample", max_new_tokens=run.data.max_prompt_tokens))
    return BudgetedDistillation(run, policy, annotator)


def build_eval(cfg: DictConfig) -> EvalRun:
    """The `EvalRun` a `kdlight-eval` config describes."""
    return EvalRun(data=instantiate(cfg.data, _convert_="object"), model=instantiate(cfg.model),
                   benchmarks=_benchmarks(cfg), tokenizer=instantiate(cfg.tokenizer), seed=cfg.seed,
                   threads=cfg.threads, device=cfg.device, data_name=cfg.data_name, label=cfg.label)


def _models(cfg: DictConfig, needs_teacher: bool) -> tuple[ModelSpec, ModelSpec | StoredTeacherSpec | None]:
    """The model to train and the teacher (if the method needs one, or `teacher_kl` asks for the
    student's held-out KL from it)."""
    if cfg.stage == "teacher":
        if needs_teacher:
            raise ValueError(f"stage=teacher fine-tunes the teacher on its own, so the method must need no teacher "
                             f"(use method=sft); got method={cfg.method.name}")
        trained = instantiate(cfg.teacher)
        if not isinstance(trained, ModelSpec):
            raise ValueError("stage=teacher trains the teacher config, which must be a model (not stored outputs)")
        return trained, None
    if cfg.stage != "student":
        raise ValueError(f"stage must be 'teacher' or 'student', got '{cfg.stage}'")
    teacher = instantiate(cfg.teacher) if needs_teacher else None
    if isinstance(teacher, ModelSpec) and cfg.teacher_from_store:
        store = stored_teacher(cfg.paths.teachers_dir, cfg.data_name, teacher.name)
        teacher = teacher.saved_at(require_stored_teacher(store, cfg.data_name, teacher.name))
    return instantiate(cfg.student), teacher


def _benchmarks(cfg: DictConfig) -> dict[str, Any]:
    return {name: instantiate(spec, _convert_="object") for name, spec in (cfg.benchmarks or {}).items()}


def slurm_plugins(requeue_owner: str) -> list:
    """The SLURM requeue owner.

    Under SLURM both Lightning (SLURMEnvironment) and the submitit launcher can requeue a job that
    reaches its time limit; two owners requeue it twice. With `requeue_owner=launcher` (default)
    Lightning's auto-requeue is off and submitit requeues (`hydra.launcher.max_num_timeout`); the
    job re-runs in the same folder and resumes from checkpoints/last.ckpt. Use
    `requeue_owner=lightning` for plain `sbatch` scripts without the launcher.
    """
    if requeue_owner not in REQUEUE_OWNERS:
        raise ValueError(f"requeue_owner must be one of {REQUEUE_OWNERS}, got '{requeue_owner}'")
    if requeue_owner == "launcher" and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def resolved(cfg: DictConfig) -> dict:
    """The run's config as plain data, without Hydra's own section."""
    return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in cfg.items() if key != "hydra"}
