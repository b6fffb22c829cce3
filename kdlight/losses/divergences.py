"""Divergences between teacher p and student q at each target position (METHODS.md §2).

Each function maps student and teacher logits for N selected positions, `[N, V]` each, to one
value per position, `[N]`. Computation is in fp32 whatever the input dtype (a bf16 teacher
against an fp32 student gave negative divergences in a peer). `-inf` logits (masked vocabulary)
are handled with 0·log 0 = 0. With temperature τ ≠ 1 both distributions are softened and the
result is multiplied by τ² (Hinton et al., 2015), keeping gradient magnitudes comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ p (log p - log q) per row, with 0·log 0 = 0 where p = 0."""
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    return (p * diff).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p‖q) = Σ_v p_v log(p_v / q_v): mean-seeking; the student covers all teacher modes.

    Args:
        student_logits: [N, V].
        teacher_logits: [N, V].
    Returns:
        [N] fp32, ≥ 0.
    """
    kl = _kl(_log_probs(teacher_logits, temperature), _log_probs(student_logits, temperature))
    return kl * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(q‖p) = Σ_v q_v log(q_v / p_v): mode-seeking; the student concentrates on teacher modes.

    Token-level RKL on given sequences, as in KID's RKD baseline (not MiniLLM's policy gradient).

    Args:
        student_logits: [N, V].
        teacher_logits: [N, V].
    Returns:
        [N] fp32, ≥ 0.
    """
    kl = _kl(_log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature))
    return kl * temperature**2


@dataclass(frozen=True)
class Divergence:
    """A divergence chosen by config: its name (for logs) and the function it applies."""

    temperature: float = 1.0
    name = "kd"

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ForwardKL(Divergence):
    name = "fkl"

    def __call__(self, student_logits, teacher_logits):
        return forward_kl(student_logits, teacher_logits, self.temperature)


@dataclass(frozen=True)
class ReverseKL(Divergence):
    name = "rkl"

    def __call__(self, student_logits, teacher_logits):
        return reverse_kl(student_logits, teacher_logits, self.temperature)
