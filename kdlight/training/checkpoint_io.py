"""Checkpoints written atomically: a run killed while saving keeps its previous `last.ckpt`.

Lightning's default writes the file in place, so a kill -9 during the write can leave a truncated
checkpoint that the next run cannot resume from.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from kdlight.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as staging:  # readers see the old file or the new one
            torch.save(checkpoint, staging)
