"""Hydra callbacks of `kdlight-train -m`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdlight.io import FAILURE_FILE

log = logging.getLogger(__name__)


class FailedJobsExit(Callback):
    """A sweep goes on when a job fails (the job writes error.txt in its folder); once every job
    has run, the command exits non-zero if any did, so a script or scheduler sees the failure."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        failed = sorted(p for p in root.rglob(FAILURE_FILE) if p.stat().st_mtime >= self.started - 1)
        if failed:
            log.error(f"{len(failed)} job(s) of the sweep failed: " + "; ".join(str(p) for p in failed))
            raise SystemExit(1)
