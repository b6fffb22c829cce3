"""A method = which sequences to teacher-force on, which divergence to the teacher, how much CE.

Almost every KD method for LMs is a combination of three independent choices (docs/methods.md,
"One design"). A method is therefore data (`Method`), not a subclass of the training loop: the one
loop in `kdlight.training.module` runs every method the same way, which is what makes
comparisons fair. Adding a method means adding a `SequenceSource` (one file) if it needs a new
kind of sequence, and a YAML preset in `conf/method/`.

A source declares what it needs in its type (`needs_teacher`, `needs_mask_token`,
`needs_preparation`) and what it can do (`covers_unlabeled`, `only_teacher_outputs`,
`fixed_sequences`); the loop and
the run read those declarations and never probe a source for methods it might have.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.batch import Batch
from kdlight.losses.objectives import Divergence
from kdlight.models.lm import set_training

if TYPE_CHECKING:  # the teacher module imports this one
    from kdlight.data.module import PromptItem
    from kdlight.training.teacher import Teacher


@dataclass
class StepContext:
    """What a sequence source may use to build a step's sequences (models are read, never trained here).

    Attributes:
        student: the student being trained.
        teacher: the frozen teacher, or None when the method needs none.
        tokenizer: the shared tokenizer.
        vocab_size: the vocabulary shared by teacher and student (padding rows excluded).
        generator: random numbers for the source, seeded per run.
        step: the optimisation step.
        epoch: the training epoch (sources whose targets change per epoch read it).
        synced: several ranks train together: a source that generates must keep decoding until
            every rank is done (a sharded student's forward is collective).
        timings: seconds a source spent on its own work this step (e.g. `generation_s`); the
            loop logs them as `train/<name>`, apart from the loss step.
    """

    student: PreTrainedModel
    teacher: Teacher | None
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int
    generator: torch.Generator
    step: int = 0
    epoch: int = 0
    synced: bool = False
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PrepareContext:
    """What a source that precomputes targets needs before the first step.

    Attributes:
        prompts: every training prompt (labeled and unlabeled), as training batches index them.
        teacher: the frozen teacher (a live model or stored outputs), or None.
        tokenizer: the shared tokenizer.
        vocab_size: the vocabulary shared by teacher and student.
        rank, world_size: this process among the training processes.
        gather: all ranks' objects, in rank order (the identity on one process).
    """

    prompts: list[PromptItem]
    teacher: Teacher | None
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int
    rank: int = 0
    world_size: int = 1
    gather: Callable[[object], list[object]] = field(default=lambda obj: [obj])


@contextmanager
def evaluating(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """The model in eval mode (no dropout) and without gradient, its previous mode restored after:
    how sources use the student to predict or sample their sequences."""
    was_training = model.training
    set_training(model, False)
    try:
        with torch.no_grad():
            yield model
    finally:
        set_training(model, was_training)


class SequenceSource(ABC):
    """Decides the target sequences of a step (gold, teacher outputs, student samples, rewrites)."""

    @property
    def needs_teacher(self) -> bool:
        """The source itself reads the teacher (its outputs), whatever the divergence."""
        return False

    @property
    def needs_mask_token(self) -> bool:
        """The tokenizer must have a mask token (one is added at start-up if it has none)."""
        return False

    @property
    def needs_preparation(self) -> bool:
        """`prepare` must run over every training prompt before the first step."""
        return False

    @property
    def covers_unlabeled(self) -> bool:
        """The source can write a target for an input without a gold one (so unlabeled inputs
        are worth training on)."""
        return False

    @property
    def keeps_gold_pairs(self) -> bool:
        """The source's targets come on top of the gold pairs: every labeled example is trained on
        with its gold target, kept as it is, and each distinct labeled input once more as an input
        whose target the source writes (KD4Gen's pseudo-target training: gold pairs + one PT per
        input)."""
        return False

    @property
    def only_teacher_outputs(self) -> bool:
        """Every sequence it writes is one of the teacher's own outputs (so a teacher known only
        by stored outputs and their log-probabilities can score them); gold pairs it keeps
        (`keeps_gold_pairs`) are not its sequences."""
        return False

    @property
    def fixed_sequences(self) -> bool:
        """An example's sequences depend only on the example and the epoch (gold, the teacher's
        stored outputs), never on the student or a random draw: the teacher's distributions on
        them can be computed once and cached (`teacher_cache`)."""
        return False

    @property
    def aligned_with_gold(self) -> bool:
        """Every sequence it writes has gold's target positions, token for token (gold itself,
        KID's in-place rewrites): gold labels can be read through it (`ce_on: gold_on_sequences`)."""
        return False

    @property
    def default_ce_on(self) -> str:
        """The `Method.ce_on` a method with this source takes when none is given."""
        return "gold"

    def prepare(self, ctx: PrepareContext) -> None:
        """Work before the first step, on every rank (only called when `needs_preparation`)."""

    @abstractmethod
    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        """The batch to teacher-force teacher and student on (the same prompts as `gold`)."""


CE_ON = ("gold", "sequences", "gold_on_sequences")


@dataclass
class Method:
    """One distillation method.

    Attributes:
        name: the method's name in logs and tables.
        source: which target sequences the divergence is computed on.
        divergence: divergence between teacher and student on those sequences; None for SFT.
        ce_weight: weight of the auxiliary cross-entropy (0 = none).
        kd_weight: weight of the divergence term.
        ce_on: `gold` (the dataset's targets, as KID adds to its baselines), `sequences` (the
            source's, e.g. SeqKD's CE on the teacher's outputs), or `gold_on_sequences` (gold
            labels read through the source's sequences, which must align with gold position for
            position: one student pass instead of two, e.g. for KID); None: the source's
            `default_ce_on` (`gold`; KID's `gold_on_sequences`), resolved when the method is made
            (`dataclasses.replace` with another source keeps the resolved value: pass ce_on too).
        teacher_dropout: run the teacher with dropout on (noisy KD).
    """

    name: str
    source: SequenceSource
    divergence: Divergence | None = None
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    ce_on: str | None = None
    teacher_dropout: bool = False

    def __post_init__(self) -> None:
        if self.ce_on is None:
            self.ce_on = self.source.default_ce_on
        if self.divergence is None and self.ce_weight == 0:
            raise ValueError(f"method '{self.name}': no divergence and ce_weight=0 leaves nothing to train on")
        if self.ce_on not in CE_ON:
            raise ValueError(f"method '{self.name}': ce_on must be one of {CE_ON}, got '{self.ce_on}'")
        if self.ce_on == "gold_on_sequences" and not self.source.aligned_with_gold:
            raise ValueError(f"method '{self.name}': ce_on=gold_on_sequences reads the gold labels through the "
                             f"source's sequences, but {type(self.source).__name__} does not keep gold's target "
                             "positions (only gold and KID's rewrites do): use ce_on=gold")

    @property
    def needs_teacher(self) -> bool:
        return self.divergence is not None or self.source.needs_teacher

    @property
    def uses_unlabeled(self) -> bool:
        """Unlabeled inputs can carry a loss: the source writes their targets."""
        return self.source.covers_unlabeled

    @property
    def keeps_gold_pairs(self) -> bool:
        """Labeled examples are trained on as gold pairs and their inputs again, for the source's targets."""
        return self.source.keeps_gold_pairs
