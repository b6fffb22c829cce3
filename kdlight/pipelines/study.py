"""Studies as configs: stages of `kdlight-train` jobs over a grid, then the reports.

A study YAML (`conf/study/<name>.yaml`, run with `kdlight-study study=<name>`) has:

    name: text2sql_tiny
    common: [experiment=text2sql_tiny]       # overrides of every job
    axes:                                    # the grid; a list gives `<axis>=<value>` overrides,
      method: [sft, fkd, rkd]                # a mapping names each value's overrides
      seed: [0, 1, 2]
      data: {sqlgen: [data=sqlgen], geoquery: [data=geoquery, data.task.prompt.schema=false]}
    stages:                                  # run in order; each job of a stage in parallel
      teacher: {label: teacher, overrides: [stage=teacher, method=sft]}
      methods:
        for_each: [method, seed]             # one job per combination of these axes
        overrides: ["teacher.path={teacher}/model"]   # {stage}: that stage's matching job folder
      final_ft:                              # {stage[axis=value]}: the job of that stage with this value
        for_each: [seed]
        overrides: ["student.path={methods[method=kid]}/model", method=sft]
    reports:                                 # written when every stage is done
      report: {stages: [methods], baseline: sft, paired: ["kid:sft"]}

Job folders are `<study folder>/<stage>/<axis values>` (e.g. `methods/fkd_seed1`); a job that
refers to another stage's job (`{teacher}`) gets the one whose axis values agree with its own. A
job is finished when its folder has `metrics.json`: a re-run of the study (after a kill, a SLURM
time-out, or with more seeds) launches only the unfinished jobs, which resume from their last
checkpoint. A finished job whose recorded overrides differ from the plan's is an error (the study
folder holds another study's results).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdlight.io import FAILURE_FILE
from kdlight.report.collect import run_overrides
from kdlight.report.paired import parse_pairs
from kdlight.report.write import ReportError, ReportSpec, write_report

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^[\w.-]+$")
# {stage} or {stage[axis=value]}: an earlier stage's job whose axis values agree with the referring
# job's, with `axis` pinned to `value` if given.
_REFERENCE = re.compile(r"\{([A-Za-z_]\w*)(?:\[([A-Za-z_]\w*)=([\w.-]+)\])?\}")


@dataclass(frozen=True)
class Stage:
    """One stage: a job per combination of `for_each` axes, with `overrides` on top."""

    name: str
    for_each: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    label: str | None = None


@dataclass(frozen=True)
class Job:
    """One `kdlight-train` run of a study."""

    stage: str
    values: tuple[tuple[str, str], ...]  # (axis, value label)
    folder: Path
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.folder.name}" if self.values else self.stage

    @property
    def finished(self) -> bool:
        return (self.folder / "metrics.json").exists()


@dataclass(frozen=True)
class Report:
    """A report over some stages' runs, written to `<study folder>/<name>/`."""

    name: str
    stages: tuple[str, ...]
    spec: ReportSpec


@dataclass
class StudyPlan:
    name: str
    common: tuple[str, ...]
    axes: dict[str, dict[str, tuple[str, ...]]]
    stages: list[Stage]
    reports: list[Report] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping) -> StudyPlan:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        if not raw or "name" not in raw or not raw.get("stages"):
            raise ValueError("a study needs a name and stages (conf/study/<name>.yaml; "
                             "run `kdlight-study study=<name>`)")
        axes = {axis: _axis_values(axis, values) for axis, values in (raw.get("axes") or {}).items()}
        stages = [Stage(name, tuple(s.get("for_each") or ()), tuple(s.get("overrides") or ()), s.get("label"))
                  for name, s in raw["stages"].items()]
        reports = [Report(name, tuple(r.get("stages") or [s.name for s in stages]), _report_spec(raw["name"], name, r))
                   for name, r in (raw.get("reports") or {}).items()]
        plan = cls(raw["name"], tuple(raw.get("common") or ()), axes, stages, reports)
        plan.check()
        return plan

    def check(self) -> None:
        """Every axis exists, and every `{stage}` reference points at an earlier stage whose axes
        the referring stage also has, or pins (so exactly one job matches)."""
        seen: dict[str, Stage] = {}
        for stage in self.stages:
            unknown = [a for a in stage.for_each if a not in self.axes]
            if unknown:
                raise ValueError(f"study {self.name}: stage '{stage.name}' iterates over unknown axes {unknown} "
                                 f"(axes: {sorted(self.axes)})")
            for override in stage.overrides:
                for match in _REFERENCE.finditer(override):
                    ref, pinned, value = match.groups()
                    where = f"study {self.name}: stage '{stage.name}' refers to '{match.group(0)}'"
                    if ref not in seen:
                        raise ValueError(f"{where}, which is not an earlier stage ({list(seen) or 'none'})")
                    if pinned and (pinned not in seen[ref].for_each or value not in self.axes[pinned]):
                        raise ValueError(f"{where}: stage '{ref}' has no job with {pinned}={value} (its axes: "
                                         f"{list(seen[ref].for_each)})")
                    if not set(seen[ref].for_each) - {pinned} <= set(stage.for_each):
                        raise ValueError(f"{where}, whose axes {list(seen[ref].for_each)} it does not all have "
                                         "(pin the others: {stage[axis=value]})")
            seen[stage.name] = stage
        for report in self.reports:
            if unknown := [s for s in report.stages if s not in seen]:
                raise ValueError(f"study {self.name}: report '{report.name}' names unknown stages {unknown}")

    def jobs(self, root: Path, stage: Stage | None = None) -> list[Job]:
        """The jobs of `stage` (default: of every stage, in order), with folders under `root`."""
        stages = [stage] if stage is not None else self.stages
        return [job for s in stages for job in self._stage_jobs(s, Path(root).resolve())]

    def _stage_jobs(self, stage: Stage, root: Path) -> list[Job]:
        combos: list[tuple[tuple[str, str], ...]] = [()]
        for axis in stage.for_each:
            combos = [c + ((axis, value),) for c in combos for value in self.axes[axis]]
        jobs = []
        for values in combos:
            overrides = [*self.common, *(o for axis, v in values for o in self.axes[axis][v])]
            overrides += [self._resolve(o, values, root) for o in stage.overrides]
            if stage.label is not None:
                overrides.append(f'label="{stage.label}"' if " " in stage.label else f"label={stage.label}")
            jobs.append(Job(stage.name, values, _job_folder(root, stage.name, values), tuple(overrides)))
        return jobs

    def _resolve(self, override: str, values: tuple[tuple[str, str], ...], root: Path) -> str:
        def folder(match: re.Match) -> str:
            name, pinned, value = match.groups()
            target = next(s for s in self.stages if s.name == name)
            own = dict(values) | ({pinned: value} if pinned else {})
            return str(_job_folder(root, target.name, tuple((a, own[a]) for a in target.for_each)))

        return _REFERENCE.sub(folder, override)


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Later overrides of the same key replace earlier ones (Hydra refuses duplicates)."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged.pop(_key(override), None)
            merged[_key(override)] = override
    return list(merged.values())


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _axis_values(axis: str, values: object) -> dict[str, tuple[str, ...]]:
    if isinstance(values, Mapping):
        named = {str(label): tuple(overrides) for label, overrides in values.items()}
    elif isinstance(values, Sequence) and not isinstance(values, str):
        named = {str(v): (f"{axis}={v}",) for v in values}
    else:
        raise ValueError(f"study axis '{axis}': a list of values or a mapping of value -> overrides, got {values!r}")
    for label in named:
        if not _LABEL.match(label):
            raise ValueError(f"study axis '{axis}': value '{label}' must be letters, digits, '.', '-' or '_' "
                             "(it names job folders)")
    if not named:
        raise ValueError(f"study axis '{axis}' has no values")
    return named


def _job_folder(root: Path, stage: str, values: tuple[tuple[str, str], ...]) -> Path:
    """`<root>/<stage>` for a stage without axes, else `<root>/<stage>/fkd_seed1`: value labels in
    axis order, numbers with their axis name (a bare `1` says little)."""
    if not values:
        return root / stage
    return root / stage / "_".join(f"{axis}{v}" if v.lstrip("-").isdigit() else v for axis, v in values)


REPORT_KEYS = ("stages", "metrics", "baseline", "paired", "summary", "fmt", "loss_fmt", "title", "order")


def _report_spec(study: str, name: str, raw: Mapping) -> ReportSpec:
    if unknown := sorted(set(raw) - set(REPORT_KEYS)):
        raise ValueError(f"study {study}: report '{name}' has unknown keys {unknown} (known: {list(REPORT_KEYS)})")
    try:
        pairs = parse_pairs(raw.get("paired") or ())
    except ValueError as error:
        raise ValueError(f"study {study}: report '{name}': {error}") from error
    return ReportSpec(metrics=tuple(raw["metrics"]) if raw.get("metrics") else None,
                      baseline=raw.get("baseline", "sft"), paired=pairs, summary=raw.get("summary", True),
                      fmt=raw.get("fmt", ReportSpec.fmt), loss_fmt=raw.get("loss_fmt", ReportSpec.loss_fmt),
                      title=raw.get("title") or f"{study}: {name}", order=tuple(raw.get("order") or ()))


Launch = Callable[[list[list[str]], int], object]  # (each job's overrides, first job number) -> results


class StudyError(RuntimeError):
    pass


def run_study(plan: StudyPlan, root: Path, arguments: Sequence[str], launch: Launch,
              dry_run: bool = False) -> list[Job]:
    """Launch each stage's unfinished jobs (through Hydra's launcher), then write the reports.

    `arguments` (the command line's overrides) apply to every job, after the study's own. Returns
    the jobs that failed (no metrics.json after their stage ran); a stage whose failed jobs a later
    stage needs stops the study.
    """
    root = Path(root).resolve()
    # The study's own overrides (study=..., study.axes.seed=...) shape the plan, not the jobs: a job
    # is the same job whatever seeds the study has, so a re-run with more seeds reuses it.
    arguments = [a for a in arguments if _key(a) != "study" and not _key(a).startswith("study.")]
    failed: list[Job] = []
    job_number = 0
    for stage in plan.stages:
        jobs = plan.jobs(root, stage)
        planned = {job.name: merge_overrides(job.overrides, arguments, ["skip_finished=true"]) for job in jobs}
        done = [job for job in jobs if job.finished]
        _check_finished(done, planned)
        todo = [job for job in jobs if not job.finished]
        log.info(f"study {plan.name}, stage {stage.name}: {len(jobs)} jobs, {len(done)} finished earlier, "
                 f"{len(todo)} to run")
        if dry_run:
            for job in jobs:
                print(f"{'done' if job.finished else 'todo'} {job.name}: {' '.join(planned[job.name])}")
            continue
        if todo:
            launch([[*planned[job.name], f"hydra.sweep.subdir={job.folder.relative_to(root)}"] for job in todo],
                   job_number)
            job_number += len(todo)
        stage_failed = [job for job in jobs if not job.finished]
        failed += stage_failed
        needed = [s.name for s in plan.stages if any(f"{{{stage.name}}}" in o for o in s.overrides)]
        if stage_failed and needed:
            raise StudyError(f"study {plan.name}: {len(stage_failed)} job(s) of stage '{stage.name}' failed, and "
                             f"stage(s) {needed} need them: " + "; ".join(_why(job) for job in stage_failed))
    if not dry_run:
        write_reports(plan, root)
    return failed


def write_reports(plan: StudyPlan, root: Path) -> None:
    stages = {stage.name: stage for stage in plan.stages}
    for report in plan.reports:
        folders = [root / s for s in report.stages if (root / s).is_dir()]
        planned = [job.folder for name in report.stages for job in plan.jobs(root, stages[name])]
        try:
            text = write_report(folders, root / report.name, report.spec, planned)
        except ReportError as error:  # e.g. every run failed: the failures are raised after this
            log.error(f"study {plan.name}: report '{report.name}' not written: {error}")
            continue
        print(text + f"\nwritten: {root / report.name}/report.{{md,csv,png}}", flush=True)


def _check_finished(done: list[Job], planned: dict[str, list[str]]) -> None:
    for job in done:
        recorded = run_overrides(job.folder)
        if not recorded:
            continue
        recorded = [o for o in recorded if not o.startswith("hydra.")]
        wanted = [o for o in planned[job.name] if not o.startswith("hydra.")]
        if sorted(recorded) != sorted(wanted):
            differ = sorted(set(recorded) ^ set(wanted))
            raise StudyError(f"{job.folder} finished with other settings than this study plans ({', '.join(differ)}): "
                             "run the study in another folder (hydra.sweep.dir=...) or remove that job's folder")


def _why(job: Job) -> str:
    error = job.folder / FAILURE_FILE
    if error.exists():
        lines = error.read_text().strip().splitlines()
        return f"{job.folder}: {lines[-1] if lines else 'unknown error'}"
    return f"{job.folder}: no metrics.json and no {FAILURE_FILE}"
