"""A method = which sequences to teacher-force on, which divergence to the teacher, how much CE.

METHODS.md §1: almost every KD method for LMs is a combination of three independent choices. A
method is therefore data (`Method`), not a subclass of the training loop: the one loop in
`kdlight.training.module` runs every method the same way, which is what makes comparisons fair.
Adding a method means adding a `SequenceSource` (one file) if it needs a new kind of sequence, and a
YAML preset in `conf/method/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.batch import Batch
from kdlight.losses.objectives import Divergence


@dataclass
class StepContext:
    """What a sequence source may use to build its sequences (models are read, never trained here).

    Attributes:
        student: the student being trained.
        teacher: the frozen teacher, or None when the method needs none.
        tokenizer: the shared tokenizer.
        vocab_size: the vocabulary shared by teacher and student (padding rows excluded).
        generator: random numbers for the source, seeded per run.
        step: the optimisation step.
        timings: seconds a source spent on its own work this step (e.g. `generation_s`); the
            loop logs them as `train/<name>`, apart from the loss step.
    """

    student: PreTrainedModel
    teacher: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int
    generator: torch.Generator
    step: int
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def evaluating(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The model in eval mode (no dropout) and without gradient, its previous mode restored after:
    how sources use the student to predict or sample their sequences."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


class SequenceSource(Protocol):
    """Decides the target sequences of a step (gold, teacher outputs, student samples, rewrites).

    A source that needs work before the first step (decoding the teacher's outputs for every
    training prompt) also defines `prepare(prompts: teacher_outputs.Prompts)`; the loop calls it
    at fit start, on every rank.
    """

    needs_teacher: bool

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        """Return the batch to teacher-force teacher and student on (same prompts as `gold`)."""
        ...


@dataclass
class Method:
    """One distillation method.

    Attributes:
        name: the method's name in logs and tables.
        source: which target sequences the divergence is computed on.
        divergence: divergence between teacher and student on those sequences; None for SFT.
        ce_weight: weight of the auxiliary cross-entropy (0 = none).
        kd_weight: weight of the divergence term.
        ce_on: `gold` (the dataset's targets, as KID adds to its baselines) or `sequences` (the
            source's, e.g. SeqKD's CE on the teacher's outputs).
    """

    name: str
    source: SequenceSource
    divergence: Divergence | None = None
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    ce_on: str = "gold"

    def __post_init__(self) -> None:
        if self.divergence is None and self.ce_weight == 0:
            raise ValueError(f"method '{self.name}': no divergence and ce_weight=0 leaves nothing to train on")
        if self.ce_on not in ("gold", "sequences"):
            raise ValueError(f"method '{self.name}': ce_on must be 'gold' or 'sequences', got '{self.ce_on}'")

    @property
    def needs_teacher(self) -> bool:
        return self.divergence is not None or self.source.needs_teacher
