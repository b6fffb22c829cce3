"""Select target positions and sum per-token losses; normalisation happens once, in the loop.

Losses are summed here and divided by the global number of target tokens of the optimisation step
(across micro-batches and ranks) by the training module, so gradient accumulation and DDP give the
same result as one big batch (docs/methods.md, "Normalisation").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_positions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits and [B, T] mask -> [N, V] rows where the mask is set (row-major order)."""
    return logits[mask.bool()]


def masked_token_sum(per_token: torch.Tensor) -> torch.Tensor:
    """Sum of per-position values. An empty selection sums to an exact 0 that still carries a
    (zero) gradient path, so an all-masked micro-batch needs no special case in the loop."""
    return per_token.sum()


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position in fp32: logits [N, V], targets [N] -> [N]."""
    return F.cross_entropy(logits.float(), targets, reduction="none")
