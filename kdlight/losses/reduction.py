"""Per-token cross-entropy; normalisation happens once, in the loop.

Per-token losses are summed over the target positions (selected by index:
`kdlight.models.lm.target_positions`) and divided by the global number of target tokens of the optimisation step
(across micro-batches and ranks) by the training module, so gradient accumulation and DDP give the
same result as one big batch (docs/methods.md, "Normalisation").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position in fp32: logits [N, V], targets [N] -> [N]."""
    return F.cross_entropy(logits.float(), targets, reduction="none")
