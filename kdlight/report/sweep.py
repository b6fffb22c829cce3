"""Collect the jobs of one or more sweep folders and aggregate them into a paper-style table.

A job is any folder with `.hydra/config.yaml`. It is finished if it has `metrics.json`, failed if
it has `error.txt` (written by `kdlight-train` in a multirun), and otherwise missing (still running,
killed, or never started). Rows are (method, student, teacher); columns are benchmark x metric,
where a run's benchmarks are its own evaluation split and the extra benchmarks it was scored on;
seeds are aggregated as mean and sample standard deviation.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


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
        for config in sorted(folder.rglob(".hydra/config.yaml")):
            job = config.parent.parent
            if (job / "metrics.json").exists():
                jobs.finished.append({"folder": str(job), **json.loads((job / "metrics.json").read_text())})
            elif (job / "error.txt").exists():
                lines = (job / "error.txt").read_text().strip().splitlines()
                jobs.failed.append((job, lines[-1] if lines else "unknown error"))
            else:
                jobs.missing.append(job)
    return jobs


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float | None
    n: int

    def render(self, fmt: str = "{:.1f}") -> str:
        text = fmt.format(self.mean)
        return text if self.std is None else f"{text} ± {fmt.format(self.std)}"


def _cell(values: list[float]) -> Cell | None:
    if not values:
        return None
    return Cell(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def run_values(run: dict, metrics: list[str]) -> dict[str, float]:
    """A run's table cells keyed `<benchmark> <METRIC>`.

    `eval/<m>` metrics exist per benchmark: the run's own evaluation split (prefix `eval`) and each
    extra benchmark (prefix = its name), as listed in metrics.json's `benchmarks`, and only where
    the benchmark reports `<m>` (BIRD: no TS). Other keys (`val/ce`, `val/kl_from_teacher`) belong
    to the run's own data.
    """
    index = run.get("benchmarks") or [{"name": run["data"], "prefix": "eval", "metrics": None}]
    values = {}
    for spec in index:
        benchmark = spec["name"]
        for metric in metrics:
            short = metric.split("/", 1)[-1]
            if metric.startswith("eval/"):
                key = f"{spec['prefix']}/{short}"
                if spec["metrics"] is not None and short not in spec["metrics"]:
                    continue
            elif benchmark == run["data"]:
                key = metric
            else:
                continue
            if key in run:
                values[f"{benchmark} {short.upper()}"] = run[key]
    return values


def aggregate(runs: list[dict], metrics: list[str], baseline: str) -> tuple[list[str], list[dict]]:
    """Rows of cells keyed `<benchmark> <metric>`, plus `average`, `delta`, `relative_step`, `seeds`.

    Columns follow the benchmarks in the order runs list them (the training data's split first),
    then the order of `metrics`: the layout of the KID paper's Tables 3-4 for a Spider sweep.
    """
    values = [run_values(r, metrics) for r in runs]
    columns = list(dict.fromkeys(c for v in values for c in v))
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for run, cells in zip(runs, values):
        groups[(run["method"], run["model"], run.get("teacher") or "-")].append((run, cells))
    base_step = {}  # (data, student) -> mean SFT step time
    for (method, model, _), members in groups.items():
        if method == baseline:
            for data in {r["data"] for r, _ in members}:
                times = [r["step_time_s"] for r, _ in members if r["data"] == data and r.get("step_time_s")]
                if times:
                    base_step[(data, model)] = statistics.fmean(times)
    rows = []
    for (method, model, teacher), members in sorted(groups.items()):
        datasets = {r["data"] for r, _ in members}
        row = {"method": method, "student": model, "teacher": teacher,
               "seeds": len({(r["data"], r["seed"]) for r, _ in members}) // max(1, len(datasets))}
        for column in columns:
            row[column] = _cell([cells[column] for _, cells in members if column in cells])
        means = [row[c].mean for c in columns if row[c] is not None]
        row["average"] = statistics.fmean(means) if len(means) == len(columns) else None
        ratios = [r["step_time_s"] / base_step[(r["data"], model)] for r, _ in members
                  if r.get("step_time_s") and (r["data"], model) in base_step]
        row["relative_step"] = statistics.fmean(ratios) if ratios else None
        rows.append(row)
    # The baseline row of the same student (and teacher, when the baseline measured its KL to one).
    base_average = {(r["student"], r["teacher"]): r["average"] for r in rows if r["method"] == baseline}
    for row in rows:
        base = base_average.get((row["student"], row["teacher"]), base_average.get((row["student"], "-")))
        row["delta"] = row["average"] - base if row["average"] is not None and base is not None else None
    return columns, rows
