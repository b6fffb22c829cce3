"""Find the runs under sweep, study or run folders, and say which finished, failed or never did.

A run is any folder with `metrics.json` (finished), `error.txt` (failed: kdlight-train writes the
traceback there, for single runs and sweep jobs alike), or `.hydra/config.yaml` or `ledger.json` (a
budgeted run) and neither (missing: still running, killed, or never started). A finished run's
record is its metrics plus `folder` and `overrides` (the job's command-line overrides, from
`.hydra/overrides.yaml`, if any).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdlight.io import FAILURE_FILE, read_json


@dataclass
class Jobs:
    finished: list[dict] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (folder, last line of the error)
    missing: list[Path] = field(default_factory=list)


def collect(folders: list[Path]) -> Jobs:
    jobs = Jobs()
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
        for job in _run_folders(folder):
            if (job / "metrics.json").exists():
                jobs.finished.append({**read_json(job / "metrics.json"), "folder": str(job),
                                      "overrides": run_overrides(job)})
            elif (job / FAILURE_FILE).exists():
                lines = (job / FAILURE_FILE).read_text().strip().splitlines()
                jobs.failed.append((job, lines[-1] if lines else "unknown error"))
            else:
                jobs.missing.append(job)
    return jobs


def _run_folders(root: Path) -> list[Path]:
    # ledger.json: a budgeted-distillation run (kdlight/pipelines/baldistill.py), whose stages are
    # training runs of their own, inside it; started from Python it has no .hydra folder.
    markers = ("metrics.json", FAILURE_FILE, "ledger.json", ".hydra/config.yaml")
    found = {p.parent for name in markers[:3] for p in root.rglob(name)}
    found |= {p.parent.parent for p in root.rglob(markers[3])}
    # A run's own sub-folders (its model/, a report folder) are not runs.
    return sorted(f for f in found if not any(parent in found for parent in f.parents))


def run_overrides(job: Path) -> list[str]:
    """The command-line overrides a run was started with (none for a run started from Python)."""
    path = job / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []
