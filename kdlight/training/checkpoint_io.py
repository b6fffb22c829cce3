"""Checkpoints written atomically: a run killed while saving keeps its previous `last.ckpt`.

Lightning's default writes the file in place, so a kill -9 during the write can leave a truncated
checkpoint that the next run cannot resume from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(checkpoint, staging)
        os.replace(staging, path)  # atomic on POSIX: readers see the old file or the new one
