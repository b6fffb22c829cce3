"""Studies as configs: the plan (grid, stages, references), the runner (through Hydra's launcher,
resuming only unfinished jobs) and the shipped studies."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdlight.pipelines.study import StudyError, StudyPlan, merge_overrides, run_study
from tests.conftest import REPO

FAST = ["trainer.max_steps=8", "data.limit_eval=12", "data.decoding.max_new_tokens=12", "loop.warmup_steps=1",
        "trainer.val_check_interval=4"]


def study(argv: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdlight.cli.study", *argv], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def plan(**changes) -> StudyPlan:
    raw = {"name": "demo", "common": ["experiment=text2sql_tiny"],
           "axes": {"data": {"a": ["data=sqlgen"], "b": ["data=sqlgen", "data.limit_train=50"]},
                    "method": ["sft", "fkd"], "seed": [0, 1]},
           "stages": {"teacher": {"for_each": ["data"], "label": "teacher", "overrides": ["stage=teacher"]},
                      "methods": {"for_each": ["data", "method", "seed"],
                                  "overrides": ["teacher.path={teacher}/model"]}},
           "reports": {"report": {"stages": ["methods"], "paired": ["fkd:sft"]}}}
    raw.update(changes)
    return StudyPlan.from_config(raw)


def test_plan_expands_the_grid_and_points_each_job_at_its_own_earlier_job(tmp_path):
    jobs = plan().jobs(tmp_path)
    names = [j.name for j in jobs]
    assert names[:2] == ["teacher/a", "teacher/b"] and len(names) == 2 + 2 * 2 * 2
    job = next(j for j in jobs if j.name == "methods/b_fkd_seed1")
    assert job.folder == tmp_path / "methods" / "b_fkd_seed1"
    assert job.overrides == ("experiment=text2sql_tiny", "data=sqlgen", "data.limit_train=50", "method=fkd", "seed=1",
                             f"teacher.path={tmp_path}/teacher/b/model")
    assert next(j for j in jobs if j.name == "teacher/a").overrides[-1] == "label=teacher"


def test_a_reference_can_pin_an_axis_the_referring_stage_does_not_have(tmp_path):
    stages = {"teacher": {"for_each": ["data"], "overrides": ["stage=teacher"]},
              "methods": {"for_each": ["data", "method", "seed"], "overrides": ["teacher.path={teacher}/model"]},
              "final_ft": {"for_each": ["seed", "data"], "overrides": ["student.path={methods[method=fkd]}/model"]}}
    jobs = plan(stages=stages).jobs(tmp_path)
    ft = next(j for j in jobs if j.name == "final_ft/seed1_b")
    assert ft.overrides[-1] == f"student.path={tmp_path}/methods/b_fkd_seed1/model"  # the target's axis order
    assert len([j for j in jobs if j.stage == "final_ft"]) == 4


@pytest.mark.parametrize("change,match", [
    ({"stages": {"methods": {"for_each": ["size"]}}}, "unknown axes \\['size'\\]"),
    ({"stages": {"methods": {"overrides": ["teacher.path={teacher}/model"]}}}, "not an earlier stage"),
    ({"stages": {"teacher": {"for_each": ["method"]}, "methods": {"for_each": ["seed"],
                                                                  "overrides": ["teacher.path={teacher}"]}}},
     "whose axes \\['method'\\] it does not all have"),
    ({"axes": {"seed": ["0 1"]}, "stages": {"s": {"for_each": ["seed"]}}}, "must be letters, digits"),
    ({"stages": {"teacher": {}, "methods": {"for_each": ["method"]}, "ft": {"for_each": ["seed"], "overrides": [
        "student.path={methods[method=kid]}"]}}}, "has no job with method=kid"),
    ({"reports": {"r": {"stages": ["nowhere"]}}}, "unknown stages"),
    ({"reports": {"r": {"stages": ["teacher"], "format": "{:.0f}"}}}, "unknown keys \\['format'\\]"),
])
def test_a_plan_that_cannot_run_is_refused_before_any_job(change, match):
    with pytest.raises(ValueError, match=match):
        plan(**change)


def test_later_overrides_replace_earlier_ones_of_the_same_key():
    assert merge_overrides(["a=1", "+b@c=x", "d=2"], ["a=3", "b@c=y"]) == ["d=2", "a=3", "b@c=y"]


def test_a_finished_job_with_other_settings_stops_the_study(tmp_path):
    demo = StudyPlan.from_config({"name": "demo", "axes": {"seed": [0]},
                                  "stages": {"s": {"for_each": ["seed"], "overrides": ["trainer.max_steps=5"]}}})
    job = demo.jobs(tmp_path)[0]
    (job.folder / ".hydra").mkdir(parents=True)
    (job.folder / "metrics.json").write_text("{}")
    (job.folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0", "trainer.max_steps=50",
                                                                          "skip_finished=true"]))
    with pytest.raises(StudyError, match="finished with other settings .*trainer.max_steps=50"):
        run_study(demo, tmp_path, [], lambda jobs, first: pytest.fail("nothing may be launched"))


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def test_the_default_study_runs_every_stage_and_writes_its_table_then_reruns_nothing(tmp_path, env):
    out = tmp_path / "study"
    argv = ["study=text2sql_tiny", "study.axes.seed=[0,1]", "study.axes.method=[sft,rkd]", f"hydra.sweep.dir={out}",
            *FAST]
    done = study(argv, env)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("teacher", "warm_start", "methods/sft_seed0", "methods/sft_seed1", "methods/rkd_seed0",
                "methods/rkd_seed1"):
        assert (out / job / "metrics.json").exists(), job
    warm = json.loads((out / "warm_start" / "metrics.json").read_text())
    rkd = json.loads((out / "methods" / "rkd_seed1" / "metrics.json").read_text())
    assert (warm["label"], rkd["label"], rkd["seed"], rkd["teacher"]) == ("warm start", "rkd", 1, "llama-m")
    rows = list(csv.DictReader(open(out / "report" / "report.csv")))
    assert [r["method"] for r in rows] == ["teacher", "warm start", "sft", "rkd"]  # the study's order, not merged
    assert [r["seeds"] for r in rows] == ["1", "1", "2", "2"] and rows[0]["student"] == "llama-m"
    runs = [json.loads((out / "methods" / f"rkd_seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert float(rows[3]["sqlgen EX mean"]) == pytest.approx((runs[0]["eval/ex"] + runs[1]["eval/ex"]) / 2)
    table = (out / "report" / "report.md").read_text()
    assert "| seeds | params | sqlgen EX | sqlgen TS | sqlgen EM | sqlgen val/ce | step (s) |" in table
    assert "sqlgen: comparator test_suite" in table and "6 finished runs" in table
    assert (out / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"

    stamp = (out / "methods" / "sft_seed0" / "metrics.json").stat().st_mtime_ns
    again = study(argv, env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("finished earlier, 0 to run") == 3 and "Training" not in log
    assert (out / "methods" / "sft_seed0" / "metrics.json").stat().st_mtime_ns == stamp


def two_job_study(tmp_path: Path, steps: int) -> list[str]:
    """A study of two SFT runs (seeds 0 and 1), in a config folder of the test's own."""
    conf = tmp_path / "conf" / "study"
    conf.mkdir(parents=True)
    (conf / "two.yaml").write_text(yaml.safe_dump({
        "name": "two", "common": ["method=sft", "data.limit_train=64", "data.batch_size=8", "data.limit_eval=8",
                                  "data.decoding.max_new_tokens=8", "threads=1", "checkpoint_every_n_steps=5"],
        "axes": {"seed": [0, 1]},
        "stages": {"runs": {"for_each": ["seed"], "overrides": [f"trainer.max_steps={steps}",
                                                                f"trainer.val_check_interval={steps // 2}"]}},
        "reports": {"report": {"stages": ["runs"], "metrics": ["eval/ex", "val/ce"]}}}))
    return ["study=two", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.sweep.dir={tmp_path / 'study'}"]


def test_a_killed_study_reruns_only_its_unfinished_job(tmp_path, env):
    """Two jobs; killed while the second trains; the re-run leaves the first alone and resumes the
    second from its checkpoint."""
    argv, out = two_job_study(tmp_path, steps=60), tmp_path / "study"
    job = subprocess.Popen([sys.executable, "-m", "kdlight.cli.study", *argv], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env, cwd=REPO, start_new_session=True)
    first, second = out / "runs" / "seed0", out / "runs" / "seed1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and job.poll() is None and not (second / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.2)
    assert job.poll() is None, "the study ended before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert (first / "metrics.json").exists() and not (second / "metrics.json").exists()
    stamp = (first / "metrics.json").stat().st_mtime_ns

    again = study(argv, env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage runs: 2 jobs, 1 finished earlier, 1 to run" in again.stdout + again.stderr
    assert (first / "metrics.json").stat().st_mtime_ns == stamp  # the finished job did not run again
    assert json.loads((second / "metrics.json").read_text())["steps"] == 60
    assert "2 finished runs" in (out / "report" / "report.md").read_text()


def test_a_study_rerun_with_more_seeds_runs_only_the_new_jobs(tmp_path, env):
    argv, out = two_job_study(tmp_path, steps=4), tmp_path / "study"
    first = study([*argv, "study.axes.seed=[0]"], env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    stamp = (out / "runs" / "seed0" / "metrics.json").stat().st_mtime_ns
    again = study([*argv, "study.axes.seed=[0,1]"], env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage runs: 2 jobs, 1 finished earlier, 1 to run" in again.stdout + again.stderr
    assert (out / "runs" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    assert "study" not in " ".join(yaml.safe_load((out / "runs" / "seed1" / ".hydra" / "overrides.yaml").read_text()))


def test_a_study_runs_its_jobs_through_the_submitit_launcher(tmp_path, env):
    argv, out = two_job_study(tmp_path, steps=4), tmp_path / "study"
    done = study([*argv, "hydra/launcher=local"], env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all((out / "runs" / f"seed{s}" / "metrics.json").exists() for s in (0, 1))
    assert len(list((out / ".submitit").glob("*/*_result.pkl"))) == 2  # each job ran as its own submitit job


@pytest.mark.parametrize("name", ["text2sql_tiny", "kid_text2sql", "kid_text2sql_paper", "baldistill_generated",
                                  "baldistill_r52"])
def test_every_job_of_the_shipped_studies_composes(name, tmp_path):
    """The first job of every stage composes into a valid kdlight-train config."""
    from hydra.utils import instantiate

    from tests.test_configs import compose_cfg

    study_plan = StudyPlan.from_config(compose_cfg([f"study={name}"], tmp_path).study)
    for stage in study_plan.stages:
        job = study_plan.jobs(tmp_path, stage)[0]
        cfg = compose_cfg([*job.overrides, f"study={name}"], tmp_path)
        assert instantiate(cfg.method, _convert_="object").name == cfg.method.name
        if name.startswith("baldistill") and stage.name == "students":
            assert instantiate(cfg.policy).budget in (120, 240, 520, 1300)
        if name == "kid_text2sql_paper" and stage.name == "methods":
            assert set(cfg.benchmarks) == {"spider_dk", "spider_realistic", "spider_syn", "bird", "bird_evidence"}
    assert study_plan.reports


@pytest.mark.slow
def test_full_default_study_teacher_clearly_beats_the_sft_student(tmp_path, env):
    """`make study` as shipped: the teacher must have something to transfer."""
    out = tmp_path / "study"
    done = study(["study=text2sql_tiny", f"hydra.sweep.dir={out}"], env, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["method"]: r for r in csv.DictReader(open(out / "report" / "report.csv"))}
    assert float(rows["teacher"]["sqlgen EX mean"]) >= float(rows["sft"]["sqlgen EX mean"]) + 10
    assert rows["sft"]["seeds"] == "3"


@pytest.mark.slow
def test_kid_study_end_to_end_with_few_steps(tmp_path, env):
    """Both datasets, three methods, one seed, a few steps (needs ../shared/data for GeoQuery)."""
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "text2sql" / "geoquery").exists():
        pytest.skip("needs the real GeoQuery in ../shared/data")
    out = tmp_path / "kid"
    done = study(["study=kid_text2sql", "study.axes.seed=[0]", "study.axes.method=[sft,kid,seqkd]",
                  f"hydra.sweep.dir={out}", *FAST], env, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    # Columns in the study's data order (not its folders', geoquery_* first); GeoQuery has no TS.
    assert "| sqlgen EX | sqlgen TS | geoquery EX | average | Δ vs sft |" in report
    assert "| kid | sft | geoquery | EX | llama-xs | llama-m | 1 | 12 |" in report
    assert "val/kl_from_teacher" in (out / "diagnostics" / "report.md").read_text()


@pytest.mark.slow
def test_kid_study_on_pretrained_smollm2_end_to_end_with_few_steps(tmp_path, env):
    """The GGUF teacher fine-tuned, a pruned warm start from the same file, two methods from it."""
    from tests.test_pretrained import needs_smollm2

    if needs_smollm2.args[0]:
        pytest.skip(needs_smollm2.kwargs["reason"])
    out = tmp_path / "pretrained"
    done = study(["study=kid_text2sql_pretrained", "study.steps={teacher: 1, warm_start: 2, methods: 2}",
                  "study.limit_eval=16", "study.limit_train=16", "study.axes.method=[sft,kid]", "study.axes.seed=[0]",
                  f"hydra.sweep.dir={out}"], env, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["method"]: r for r in csv.DictReader(open(out / "report" / "report.csv"))}
    assert set(rows) == {"teacher", "warm start", "sft", "kid"}
    assert (rows["teacher"]["student"], rows["kid"]["student"], rows["kid"]["teacher"]) == (
        "smollm2-135m", "smollm2-6l", "smollm2-135m")
    warm = json.loads((out / "warm_start" / "model" / "config.json").read_text())
    assert warm["num_hidden_layers"] == 6 and int(rows["warm start"]["params"]) < int(rows["teacher"]["params"]) / 2
