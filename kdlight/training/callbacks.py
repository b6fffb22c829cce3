"""Callbacks the shared loop relies on."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepTimer(L.Callback):
    """Wall time per optimisation step (the "training time relative to SFT" column) and of the
    whole fit, across restarts.

    The first `skip` steps (allocation, lazy initialisation) are left out of the median; the
    median resists the odd slow step (a checkpoint write, a validation pass in between). Both are
    kept in every checkpoint, so a run resumed after a kill reports the whole run (the time between
    its last checkpoint and the kill is lost with the work it did).
    """

    def __init__(self, skip: int = 5):
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0
        self._fit_before = 0.0  # seconds of fitting in earlier attempts of this run
        self._fit_start: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def median_step_s(self) -> float | None:
        kept = self.times[self.skip:] or self.times
        return statistics.median(kept) if kept else None

    @property
    def fit_s(self) -> float:
        """Seconds spent fitting, earlier attempts of a resumed run included."""
        now = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._fit_before + now

    def state_dict(self) -> dict[str, Any]:
        return {"times": list(self.times), "fit_s": self.fit_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.times = list(state["times"])
        self._fit_before = state["fit_s"]


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing each step's `train/loss` as `loss` (the loop gives
    Lightning its metrics only on the steps the loggers write, and nothing to the bar itself)."""

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "step_metrics", {}).get("train/loss")
        if loss is not None:
            metrics["loss"] = f"{float(loss):.3g}"
        return metrics
