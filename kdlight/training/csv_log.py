"""A CSV logger whose file survives a resumed run.

Lightning's CSVLogger deletes `metrics.csv` when it finds one, so a run resumed after a kill kept
only the rows logged after the restart. This one keeps the rows of the earlier attempt logged
before the step the run resumes from (Lightning writes the file after every row, so they are all
on disk) and drops the rest, which the resumed run logs again. So the file of a killed and resumed
run equals that of an uninterrupted one. One window remains: a kill during a validation pass that
runs at a checkpoint's step loses that pass's row, as Lightning does not repeat the pass on resume.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from kdlight.io import write_atomic


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` that keeps the rows of an interrupted attempt of the same run, up to the step of
    the checkpoint the run resumes from."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _KeepingWriter(self.log_dir)
        return self._experiment

    def resume_from(self, step: int) -> None:
        """Keep the earlier attempt's rows logged before `step` (the resumed checkpoint's global
        step: the rows a run logs for the optimisation step that reaches it carry `step - 1`)."""
        writer = self.experiment
        if isinstance(writer, _KeepingWriter):  # ranks other than 0 log nothing
            writer.keep_before = step


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Read the rows already written instead of deleting the file; the first save replaces it
        with the rows kept (none unless the run resumed from a checkpoint)."""
        path = Path(self.metrics_file_path)
        self.keep_before = 0
        self._earlier: list[dict[str, str]] | None = None
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self._earlier = list(reader)
                self._earlier_keys = list(reader.fieldnames or [])

    def save(self) -> None:
        if self._earlier is not None and self.metrics:
            kept = [row for row in self._earlier if row.get("step") and int(row["step"]) < self.keep_before]
            self._earlier = None
            if kept:  # replaced atomically: a kill now leaves the earlier file, to be read again
                text = io.StringIO(newline="")
                writer = csv.DictWriter(text, fieldnames=self._earlier_keys)
                writer.writeheader()
                writer.writerows(kept)
                write_atomic(self.metrics_file_path, text.getvalue())
                self.metrics_keys = list(self._earlier_keys)
            else:
                Path(self.metrics_file_path).unlink(missing_ok=True)
        super().save()
