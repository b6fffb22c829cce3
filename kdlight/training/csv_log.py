"""A CSV logger whose file survives a resumed run.

Lightning's CSVLogger deletes `metrics.csv` when it finds one, so a run resumed after a kill kept
only the rows logged after the restart. This one keeps the earlier rows up to the point the run
resumed from (the rows after it are logged again by the resumed run), so the file of a killed and
resumed run equals that of an uninterrupted one. The training module saves the log with every
checkpoint, so every row before a checkpoint is on disk when it is written.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` that keeps the rows of an interrupted attempt of the same run."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _KeepingWriter(self.log_dir)
        return self._experiment


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Read the rows already written instead of deleting the file."""
        path = Path(self.metrics_file_path)
        self._earlier: list[dict[str, str]] = []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self._earlier = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self._earlier is not None:  # the first row of this attempt: keep what came before it
            first = len(self._earlier) if step is None else step
            kept = [row for row in self._earlier if row.get("step") not in (None, "") and int(row["step"]) < first]
            self._write_earlier(kept)
            self._earlier = None
        super().log_metrics(metrics_dict, step)

    def _write_earlier(self, rows: list[dict[str, str]]) -> None:
        path = Path(self.metrics_file_path)
        if not rows:
            path.unlink(missing_ok=True)
            return
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
