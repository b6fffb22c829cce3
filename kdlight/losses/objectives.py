"""Divergences as configurable strategies (`conf/method/*.yaml` -> `divergence:`).

Each wraps one closed-form divergence of `kdlight.losses.divergences` (value and gradient) with its
hyperparameters and applies it through the shared chunking wrapper, so every divergence gets the
same memory bound and none builds an autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kdlight.losses import divergences as D
from kdlight.losses.chunked import chunked_divergence
from kdlight.losses.sparse import MISSING_MASS, SparseTargets, restrict_to_support


@dataclass(frozen=True)
class Divergence:
    """Base: `__call__(student [N, V], teacher) -> [N]`, chunked.

    The teacher is dense logits [N, V], or `SparseTargets` (top-k ids and log-probabilities).

    Attributes:
        temperature: τ (results are multiplied by τ²).
        chunk_size: positions per chunk; peak extra memory is a few chunk_size x V fp32 tensors.
            None (default): 2^24 / V positions, the same memory bound at any vocabulary size.
        missing_mass: with a sparse teacher, `renormalize` over its top-k or keep a `rest` bucket.
    """

    temperature: float = 1.0
    chunk_size: int | None = None
    missing_mass: str = "renormalize"
    name: ClassVar[str] = "kd"

    def value_and_grad(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, V] x2 -> values [n] and their gradient [n, V] with respect to the student logits."""
        raise NotImplementedError

    def __call__(self, student_logits: torch.Tensor, teacher: torch.Tensor | SparseTargets) -> torch.Tensor:
        if isinstance(teacher, SparseTargets):
            return chunked_divergence(self._sparse_value_and_grad, student_logits, (teacher.ids, teacher.log_probs),
                                      self.chunk_size)
        return chunked_divergence(self.value_and_grad, student_logits, teacher, self.chunk_size)

    def value_and_grad_on(self, student_logits: torch.Tensor, teacher: torch.Tensor | SparseTargets,
                          need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk, unchunked: values [n] and their gradient [n, V] against dense teacher logits
        or top-k rows (the fused output head calls this per chunk)."""
        if isinstance(teacher, SparseTargets):
            return self._sparse_value_and_grad(student_logits, teacher.ids, teacher.log_probs, need_grad)
        return self.value_and_grad(student_logits, teacher, need_grad)

    def _sparse_value_and_grad(self, student_logits: torch.Tensor, ids: torch.Tensor, log_probs: torch.Tensor,
                               need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The divergence over the teacher's support ([n, k] or [n, k+1] rows, closed form), and
        autograd only for the small step from the student's [n, V] logits to those rows."""
        with torch.enable_grad():
            student_logits = student_logits.detach().requires_grad_(need_grad)
            student_rows, teacher_rows = restrict_to_support(student_logits, ids, log_probs, self.missing_mass)
            values, rows_grad = self.value_and_grad(student_rows.detach(), teacher_rows, need_grad)
            if not need_grad:
                return values, None
            (grad,) = torch.autograd.grad(student_rows, student_logits, rows_grad)
        return values, grad

    def __post_init__(self) -> None:
        if self.missing_mass not in MISSING_MASS:
            raise ValueError(f"missing_mass must be one of {MISSING_MASS}, got '{self.missing_mass}'")


@dataclass(frozen=True)
class ForwardKL(Divergence):
    name: ClassVar[str] = "fkl"

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.forward_kl_and_grad(student_logits, teacher_logits, self.temperature, need_grad)


@dataclass(frozen=True)
class ReverseKL(Divergence):
    name: ClassVar[str] = "rkl"

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.reverse_kl_and_grad(student_logits, teacher_logits, self.temperature, need_grad)


@dataclass(frozen=True)
class JensenShannon(Divergence):
    name: ClassVar[str] = "js"

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.generalized_jsd_and_grad(student_logits, teacher_logits, 0.5, self.temperature, need_grad)


@dataclass(frozen=True)
class GeneralizedJSD(Divergence):
    """GJSD(β); β strictly inside (0, 1) (the ends are `ForwardKL` / `ReverseKL`)."""

    beta: float = 0.5
    name: ClassVar[str] = "gjsd"

    def __post_init__(self) -> None:  # fail when the config is built, not at the first step
        super().__post_init__()
        D.check_gjsd_beta(self.beta)

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.generalized_jsd_and_grad(student_logits, teacher_logits, self.beta, self.temperature, need_grad)


@dataclass(frozen=True)
class TotalVariation(Divergence):
    name: ClassVar[str] = "tvd"

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.total_variation_and_grad(student_logits, teacher_logits, self.temperature, need_grad)


@dataclass(frozen=True)
class SkewForwardKL(Divergence):
    alpha: float = 0.1
    name: ClassVar[str] = "skl"

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.skew_forward_kl_and_grad(student_logits, teacher_logits, self.alpha, self.temperature, need_grad)


@dataclass(frozen=True)
class SkewReverseKL(Divergence):
    alpha: float = 0.1
    name: ClassVar[str] = "srkl"

    def value_and_grad(self, student_logits, teacher_logits, need_grad=True):
        return D.skew_reverse_kl_and_grad(student_logits, teacher_logits, self.alpha, self.temperature, need_grad)
