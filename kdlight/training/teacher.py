"""The frozen teacher: evaluated, never trained, never saved with the student.

It is deliberately *not* an `nn.Module` attribute of the LightningModule: an unregistered model
cannot reach the optimiser, the checkpoint's state dict, the saved hyperparameters, or a
DDP/FSDP gradient wrapper. The module places it on its own device explicitly, either replicated
(a full copy per rank, the default) or sharded across ranks with FSDP2 (`placement="shard"`: each
rank holds 1/world of its parameters, gathered layer by layer in each forward pass). A sharded
forward is collective, so every rank must run the same number of teacher forwards per step.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from kdlight.data.batch import Batch
from kdlight.models.lm import target_logits


PLACEMENTS = ("replicate", "shard")


class FrozenTeacher:
    def __init__(self, model: PreTrainedModel, placement: str = "replicate"):
        if placement not in PLACEMENTS:
            raise ValueError(f"teacher placement must be one of {PLACEMENTS}, got '{placement}'")
        model.requires_grad_(False)
        model.eval()
        self.model, self.placement, self.sharded = model, placement, False

    def to(self, device: torch.device) -> FrozenTeacher:
        if not self.sharded and next(self.model.parameters()).device != device:
            self.model.to(device)
        if self.placement == "shard" and not self.sharded and _world_size() > 1:
            _shard(self.model)
            self.sharded = True
        return self

    def target_logits(self, batch: Batch, vocab_size: int) -> torch.Tensor:
        """[B, T, V] teacher logits. `no_grad` rather than `inference_mode`: inference tensors may
        not be saved for backward, and the divergence's backward needs the teacher's values."""
        self.model.eval()  # a caller's .train() on a parent must never switch on teacher dropout
        with torch.no_grad():
            return target_logits(self.model, batch, vocab_size)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _shard(model: PreTrainedModel) -> None:
    """FSDP2 per transformer layer (HF's `_no_split_modules`), then the rest, on the default group."""
    from torch.distributed.fsdp import fully_shard

    layer_types = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_types:
            fully_shard(module)
    fully_shard(model)
