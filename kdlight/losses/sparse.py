"""Sparse teacher targets: the teacher's top-k token ids and log-probabilities per position.

A cached or black-box teacher often keeps only its top-k (DistillKit stores ~300 bytes a token).
The divergence is then taken over the k kept tokens, with the teacher's missing mass either
- `renormalize`: dropped; teacher and student are both renormalised over the k tokens, or
- `rest`: kept as one extra "rest" bucket (1 - Σ top-k) for both teacher and student.
Either way the result is a pair of [N, k] or [N, k+1] log-probability rows, which any dense
divergence accepts (log-softmax of normalised log-probabilities is the identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MISSING_MASS = ("renormalize", "rest")
_TINY = torch.finfo(torch.float32).tiny  # log(tiny) ~ -87: "no mass" without an infinite gradient


@dataclass
class SparseTargets:
    """Top-k teacher targets for N positions.

    Attributes:
        ids: [N, k] token ids ([B, T, k] before positions are selected).
        log_probs: [N, k] the teacher's log-probabilities of those tokens (full-vocabulary softmax).
    """

    ids: torch.Tensor
    log_probs: torch.Tensor

    def take(self, positions: torch.Tensor) -> SparseTargets:
        """[B, T, k] rows at flat positions (`kdlight.models.lm.target_positions`) -> [N, k]."""
        return SparseTargets(self.ids.flatten(0, 1).index_select(0, positions),
                             self.log_probs.flatten(0, 1).index_select(0, positions))

    def rows(self, start: int, stop: int) -> SparseTargets:
        """Rows start:stop of [N, k] targets (one chunk)."""
        return SparseTargets(self.ids[start:stop], self.log_probs[start:stop])


def restrict_to_support(student_logits: torch.Tensor, ids: torch.Tensor, teacher_log_probs: torch.Tensor,
                        missing_mass: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over the teacher's support: [N, k] or [N, k+1] each.

    Args:
        student_logits: [N, V].
        ids: [N, k] teacher token ids.
        teacher_log_probs: [N, k].
        missing_mass: `renormalize` or `rest` (see module docstring).
    """
    if missing_mass == "renormalize":
        return student_logits.float().gather(-1, ids), teacher_log_probs.float()  # log-softmax renormalises
    if missing_mass != "rest":
        raise ValueError(f"missing_mass must be one of {MISSING_MASS}, got '{missing_mass}'")
    student_kept = torch.log_softmax(student_logits.float(), -1).gather(-1, ids)  # [N, k]
    teacher_kept = teacher_log_probs.float()
    return _with_rest(student_kept), _with_rest(teacher_kept)


def _with_rest(kept: torch.Tensor) -> torch.Tensor:
    """Append log(1 - Σ exp(kept)) as the last column."""
    rest = -torch.expm1(torch.logsumexp(kept, -1, keepdim=True))  # 1 - Σ, in [0, 1]
    return torch.cat([kept, rest.clamp_min(_TINY).log()], dim=-1)
