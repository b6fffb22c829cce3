"""The frozen teacher: evaluated, never trained, never saved with the student.

It is deliberately *not* an `nn.Module` attribute of the LightningModule: an unregistered model
cannot reach the optimiser, the checkpoint's state dict, the saved hyperparameters, or a
DDP/FSDP gradient wrapper. The module places it on its own device explicitly.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from kdlight.data.batch import Batch
from kdlight.models.lm import target_logits


class FrozenTeacher:
    def __init__(self, model: PreTrainedModel):
        model.requires_grad_(False)
        model.eval()
        self.model = model

    def to(self, device: torch.device) -> FrozenTeacher:
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self

    def target_logits(self, batch: Batch, vocab_size: int) -> torch.Tensor:
        """[B, T, V] teacher logits. `no_grad` rather than `inference_mode`: inference tensors may
        not be saved for backward, and the divergence's backward needs the teacher's values."""
        self.model.eval()  # a caller's .train() on a parent must never switch on teacher dropout
        with torch.no_grad():
            return target_logits(self.model, batch, vocab_size)
