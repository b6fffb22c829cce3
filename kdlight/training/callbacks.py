"""Callbacks the shared loop relies on."""

from __future__ import annotations

import statistics
import time

import lightning as L


class StepTimer(L.Callback):
    """Wall time per optimisation step, for the "training time relative to SFT" column.

    The first `skip` steps (allocation, lazy initialisation) are left out; the median resists the
    odd slow step (a checkpoint write, a validation pass in between).
    """

    def __init__(self, skip: int = 5):
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def median_step_s(self) -> float | None:
        kept = self.times[self.skip:] or self.times
        return statistics.median(kept) if kept else None
