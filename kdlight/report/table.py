"""Runs -> the table a paper prints: rows of runs that differ only in seed, columns benchmark x metric.

Rows: runs are grouped by what makes them the same experiment: their label (a study stage's name,
else the method), stage, student, teacher, and any command-line override that differs between
runs on the same data (beyond seed, paths and extra benchmarks). Runs that share method and student
but differ in, say, the learning rate or `method.ce_weight` are separate rows, labelled with what
differs (`sft [optimizer.lr=1e-4]`); seeds are aggregated as mean ± sample standard deviation. A row
never holds two runs of the same data and seed: such runs (started from Python, without overrides
to tell them apart) are shown as rows of their own, labelled with their folder.

Columns: a run's benchmarks are its own evaluation split (named after its data) and the extra
benchmarks it was scored on, in the order metrics.json lists them; each shows the metrics its
scorer declares for tables (`eval/ex` and `eval/ts` for text-to-SQL, EX only for BIRD, a ceiling
when some questions cannot be executed), or the metrics asked for. Then the average, the
difference from the baseline row of the same student (and teacher), and the training step time
relative to the baseline's.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Overrides that never make runs different experiments: the seed (runs of one row), the label,
# method, models and data (already in the row key or the columns), where things are written or
# cached, and switches that change nothing in training.
IGNORED_OVERRIDES = ("seed", "label", "method", "model@student", "model@teacher", "data", "stage", "paths", "hydra",
                     "skip_finished", "study", "teacher_from_store", "teacher_kl", "threads", "benchmarks")


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


def run_values(run: dict, metrics: list[str] | None) -> dict[str, float]:
    """A run's table cells keyed `<benchmark> <METRIC>` (scores from a scorer, e.g. `sqlgen EX`)
    or `<benchmark> <key>` (other metrics, e.g. `sqlgen val/ce`, formatted apart).

    `eval/<m>` metrics exist per benchmark (the run's own split has prefix `eval`, each extra
    benchmark its name); with `metrics` None each benchmark shows what its scorer declares. Other
    keys (`val/ce`, `val/kl_from_teacher`) belong to the run's own data.
    """
    index = run.get("benchmarks") or [{"name": run["data"], "prefix": "eval", "metrics": []}]
    values = {}
    for spec in index:
        wanted = [f"eval/{m}" for m in spec["metrics"]] if metrics is None else metrics
        for metric in wanted:
            short = metric.split("/", 1)[-1]
            if metric.startswith("eval/"):
                key = f"{spec['prefix']}/{short}"
            elif spec["prefix"] == "eval":
                key = metric
            else:
                continue
            if key in run:
                values[f"{spec['name']} {short.upper() if metric.startswith('eval/') else metric}"] = run[key]
    return values


def is_score(column: str) -> bool:
    """Scores (percentages from a scorer, per group too: `ACC/NEXT`) are the upper-case columns;
    other metrics (losses, counts) keep their key (`val/ce`, `ledger/real`)."""
    name = column.split(" ", 1)[-1]
    return name == name.upper()


def row_keys(runs: list[dict]) -> list[tuple]:
    """What makes runs rows of their own (see the module docstring): (label, stage, student,
    teacher, overrides that differ between runs sharing the first four on the same data)."""
    base = [(r.get("label") or r["method"], r.get("stage", "student"), r["model"], r.get("teacher") or "-")
            for r in runs]
    relevant = [frozenset(o for o in r.get("overrides", []) if _distinguishes(o)) for r in runs]
    relevant = _without_seed_derived(base, runs, relevant)
    common: dict[tuple, frozenset] = {}  # per (base key, data): a data set's own settings are columns
    for key, run, overrides in zip(base, runs, relevant):
        where = (key, run["data"])
        common[where] = common[where] & overrides if where in common else overrides
    keys = [(*key, tuple(sorted(overrides - common[(key, run["data"])])))
            for key, run, overrides in zip(base, runs, relevant)]
    return _apart_same_seed(keys, runs)


def _without_seed_derived(base: list[tuple], runs: list[dict], relevant: list[frozenset]) -> list[frozenset]:
    """Drop overrides whose value follows the seed within a row (e.g. a study stage that starts from
    the same-seed job of an earlier stage: `student.path=.../joint_teaching_seed1/model`): they
    name where each seed's run started, not another experiment."""
    values: dict[tuple, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for key, run, overrides in zip(base, runs, relevant):
        for override in overrides:
            name, _, value = override.partition("=")
            values[(key, run["data"], name)][run["seed"]].add(value)
    derived = {where for where, by_seed in values.items()
               if len(by_seed) > 1 and all(len(v) == 1 for v in by_seed.values())
               and len(set().union(*by_seed.values())) == len(by_seed)}
    return [frozenset(o for o in overrides if (key, run["data"], o.partition("=")[0]) not in derived)
            for key, run, overrides in zip(base, runs, relevant)]


def _apart_same_seed(keys: list[tuple], runs: list[dict]) -> list[tuple]:
    """Runs of one row with the same data and seed are not seeds of one experiment: give each its
    own row, named after its folder (as far up as tells them apart: two sweeps name their jobs
    alike)."""
    same: dict[tuple, list[int]] = defaultdict(list)
    for i, (key, run) in enumerate(zip(keys, runs)):
        same[(key, run["data"], run["seed"])].append(i)
    apart = [(*key, False) for key in keys]
    for members in (m for m in same.values() if len(m) > 1):
        folders = [Path(runs[i]["folder"]).resolve() for i in members]
        common = Path(os.path.commonpath(folders))
        for i, folder in zip(members, folders):
            apart[i] = (*keys[i][:4], keys[i][4] + (f"run {folder.relative_to(common)}",), True)
    return apart


def _distinguishes(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    if key.startswith("benchmark@"):
        return False
    return key not in IGNORED_OVERRIDES and not key.startswith(("paths.", "hydra.", "study.", "benchmarks."))


def aggregate(runs: list[dict], metrics: list[str] | None, baseline: str) -> tuple[list[str], list[dict]]:
    """Rows of cells keyed `<benchmark> <METRIC>`, plus `average`, `delta`, `relative_step`, `seeds`."""
    values = [run_values(r, metrics) for r in runs]
    columns = list(dict.fromkeys(c for v in values for c in v))
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for key, run, cells in zip(row_keys(runs), runs, values):
        groups[key].append((run, cells))
    base_step = _baseline_steps(groups, baseline)
    rows = []
    scores = [c for c in columns if is_score(c) and not c.endswith(" CEILING")]
    for key, members in groups.items():
        label, stage, model, teacher, extra, split = key
        datasets = {r["data"] for r, _ in members}
        row = {"method": label + (f" [{', '.join(extra)}]" if extra else ""), "base": label, "extra": extra, "stage": stage,
               "student": model, "teacher": teacher, "params": members[0][0].get("params"), "split": split,
               "seeds": len({(r["data"], r["seed"]) for r, _ in members}) // max(1, len(datasets))}
        for column in columns:
            row[column] = _cell([cells[column] for _, cells in members if column in cells])
        means = [row[c].mean for c in scores if row[c] is not None]
        row["average"] = statistics.fmean(means) if means and len(means) == len(scores) else None
        steps = [r["step_time_s"] for r, _ in members if r.get("step_time_s")]
        row["step_time_s"] = statistics.fmean(steps) if steps else None
        ratios = [r["step_time_s"] / step for r, _ in members
                  if r.get("step_time_s") and (step := base_step.get((r["data"], model, extra),
                                                                      base_step.get((r["data"], model, ()))))]
        row["relative_step"] = statistics.fmean(ratios) if ratios else None
        rows.append(row)
    # The baseline row of the same student (and teacher, when the baseline measured its KL to one),
    # and of the same settings when rows are split by one (a budget); else the baseline's only row.
    base_average = {(r["student"], r["teacher"], r["extra"]): r["average"] for r in rows
                    if r["base"] == baseline and r["stage"] == "student"}
    for row in rows:
        candidates = [(row["student"], teacher, extra) for extra in (row["extra"], ()) for teacher in (row["teacher"], "-")]
        base = next((base_average[c] for c in candidates if c in base_average), None)
        row["delta"] = row["average"] - base if row["average"] is not None and base is not None else None
    return columns, rows


def _baseline_steps(groups: dict, baseline: str) -> dict[tuple, float]:
    """(data, student, settings) -> mean step time of the baseline method's student runs."""
    times: dict[tuple, list[float]] = defaultdict(list)
    for (label, stage, model, _, extra, _), members in groups.items():
        if label == baseline and stage == "student":
            for run, _ in members:
                if run.get("step_time_s"):
                    times[(run["data"], model, extra)].append(run["step_time_s"])
    return {key: statistics.fmean(values) for key, values in times.items()}


def scoring_notes(runs: list[dict]) -> list[str]:
    """How each benchmark was scored (e.g. its comparator) and the scorers' notes, once each."""
    settings: dict[str, set[str]] = defaultdict(set)
    notes: list[str] = []
    for run in runs:
        for spec in run.get("benchmarks") or []:
            described = ", ".join(f"{k} {v}" for k, v in sorted(spec.get("settings", {}).items()) if k != "scorer")
            if described:
                settings[spec["name"]].add(described)
            notes += [n for n in spec.get("notes", []) if n not in notes]
    lines = [f"{name}: {' / '.join(sorted(how))}" for name, how in settings.items()]
    return lines + notes
