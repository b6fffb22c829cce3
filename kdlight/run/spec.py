"""`Run`: everything one training run is made of, as typed components; `RunResult`: what it gives.

    from kdlight.run import Run, train
    from kdlight.data.module import DataSpec
    from kdlight.tasks.jsonl import JsonlTask
    from kdlight.models import ModelSpec

    task = JsonlTask(train_file="train.jsonl", eval_file="dev.jsonl")
    result = train(Run(data=DataSpec(task), student=ModelSpec("tiny", family="llama", config={...})), "runs/sft")
    result.metrics["eval/em"], result.model_dir

The command line builds the same object from the Hydra config (`kdlight.config.build_run`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from kdlight.data.module import DataSpec
from kdlight.data.tokenizer import TokenizerSpec
from kdlight.methods.base import Method
from kdlight.methods.gold import GoldSequences
from kdlight.models.build import ModelSpec
from kdlight.tasks.base import Task
from kdlight.training.module import LoopOptions
from kdlight.training.teacher import StoredTeacherSpec
from kdlight.training.teacher_cache import TeacherCacheSpec


def sft() -> Method:
    return Method("sft", GoldSequences(), None, ce_weight=1.0, kd_weight=0.0)


@dataclass
class Run:
    """One model trained with one method on one task, then evaluated.

    Attributes:
        data: the task, its loader settings and its evaluation decoding.
        student: the model to train.
        method: sequence source x divergence x CE weight (default: SFT).
        teacher: a model, a file of a teacher's outputs (`StoredTeacherSpec`), or None. Loaded
            only if the method needs it or `teacher_kl` is set.
        benchmarks: evaluation-only tasks scored after training, by name.
        tokenizer: where the tokenizer comes from (default: the one saved with the student or
            teacher, else one trained on the training text).
        optimizer: builds the optimiser from the student's trainable parameters.
        loop: how the shared loop optimises.
        trainer: Lightning `Trainer` arguments (accelerator, devices, precision, max_steps, ...).
        logger: a Lightning logger (None: none).
        callbacks: extra Lightning callbacks (a checkpoint and a step timer are always added).
        plugins: extra Lightning plugins (atomic checkpoint writes are always added).
        seed: model initialisation, data order and the method's random draws.
        threads: torch CPU threads (None: torch's default).
        checkpoint_every_n_steps: how often `checkpoints/last.ckpt` is written (resume point).
        select_by: keep the weights of the validation with the lowest value of this metric
            (`val/ce`: the held-out CE on the validation targets) instead of the last ones; they
            are what is saved and scored (None: the last weights).
        teacher_kl: load the teacher even if the method does not use it, to report the student's
            held-out KL from it (`val/kl_from_teacher`).
        teacher_cache: keep the teacher's top-k log-probabilities per target position, computed once
            and shared by every epoch and student (methods on fixed sequences); None: the live
            teacher every step.
        skip_finished: if the output folder has metrics.json, return it without running.
        data_name, label, stage: how the run is named in metrics.json and tables (`label`: a row
            label for tables, default the method's name; `stage`: `student` or `teacher`).
        config: the run's settings as plain data, logged to every logger (the CLI passes the
            resolved Hydra config).
    """

    data: DataSpec
    student: ModelSpec
    method: Method = field(default_factory=sft)
    teacher: ModelSpec | StoredTeacherSpec | None = None
    benchmarks: Mapping[str, Task] = field(default_factory=dict)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    optimizer: Callable[..., torch.optim.Optimizer] = partial(torch.optim.AdamW, lr=1e-3)
    loop: LoopOptions = field(default_factory=LoopOptions)
    trainer: Mapping[str, Any] = field(default_factory=lambda: {"accelerator": "cpu", "devices": 1, "max_steps": 100})
    logger: L.pytorch.loggers.Logger | None = None
    callbacks: Sequence[L.Callback] = ()
    plugins: Sequence[Any] = ()
    seed: int = 0
    threads: int | None = None
    checkpoint_every_n_steps: int = 100
    select_by: str | None = None
    teacher_kl: bool = False
    teacher_cache: TeacherCacheSpec | None = None
    skip_finished: bool = False
    data_name: str = "data"
    label: str | None = None
    stage: str = "student"
    config: Mapping[str, Any] | None = None


@dataclass
class RunResult:
    """What a run gives.

    Attributes:
        metrics: everything metrics.json holds (scores, held-out loss, step time, identity).
        out: the run's folder.
        model_dir: the saved model and tokenizer (a later run's `path`), or None (evaluation only).
        reused: the run had finished before (`skip_finished`) and was not run again.
    """

    metrics: dict[str, Any]
    out: Path
    model_dir: Path | None
    reused: bool = False
