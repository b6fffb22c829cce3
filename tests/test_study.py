"""The default study script end to end, with a few steps per stage (the full run is `make study`)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_study_runs_every_stage_and_writes_the_table(tmp_path):
    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "study"
    command = [sys.executable, str(REPO / "experiments" / "text2sql_tiny" / "run.py"), "--out", str(out),
               "trainer.max_steps=8", "data.limit_eval=12", "loop.max_new_tokens=12", "loop.warmup_steps=1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("teacher", "student_init", "sft", "fkd", "rkd"):
        assert (out / stage / "metrics.json").exists(), stage
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["method"] for r in rows] == ["teacher (sft)", "student warm start (sft)", "sft", "fkd", "rkd"]
    assert rows[0]["model"] == "llama-m" and {r["model"] for r in rows[1:]} == {"llama-xs"}
    assert int(rows[0]["params"]) > 5 * int(rows[2]["params"])
    assert float(rows[2]["relative_step_time"]) == pytest.approx(1.0)
    assert all(float(r["relative_step_time"]) > 1.0 for r in rows[3:])  # KD adds a teacher forward
    table = (out / "comparison.md").read_text()
    assert "| rkd | llama-xs |" in table and "step vs SFT" in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "rkd" in done.stdout and "comparison" in done.stdout

    # Re-running the same command reuses finished stages instead of training again.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("done earlier") == 5


@pytest.mark.slow
def test_full_default_study_teacher_clearly_beats_the_sft_student(tmp_path):
    """`make study` as shipped (~6-8 min): the teacher must have something to transfer."""
    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "study"
    command = [sys.executable, str(REPO / "experiments" / "text2sql_tiny" / "run.py"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["method"]: r for r in csv.DictReader(open(out / "comparison.csv"))}
    teacher, sft = float(rows["teacher (sft)"]["eval/ex"]), float(rows["sft"]["eval/ex"])
    assert teacher >= sft + 10, (teacher, sft)
    for method in ("fkd", "rkd"):
        assert 1.0 < float(rows[method]["relative_step_time"]) < 5.0


def kid_study():
    sys.path.insert(0, str(REPO / "experiments" / "kid_text2sql"))
    try:
        import run as kid_run
    finally:
        sys.path.pop(0)
    return kid_run


@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_kid_study_plan_composes_at_every_scale(scale, tmp_path):
    """Every command of the sweep names valid config options (checked on each job's first value)."""
    from tests.test_configs import compose_cfg

    kid_run = kid_study()
    settings = kid_run.SCALES[scale]
    for data in settings.datasets:
        for name, arguments in kid_run.plan(settings, tmp_path, data):
            overrides = [a.split("=", 1)[0] + "=" + a.split("=", 1)[1].split(",")[0] if "," in a and "[" not in a
                         else a for a in arguments if a != "-m" and not a.startswith("hydra.")]
            cfg = compose_cfg(overrides, tmp_path)
            assert cfg.data_name == data and cfg.skip_finished, name
            if name == "methods":
                assert cfg.teacher_from_store and cfg.teacher_kl
                assert set(cfg.benchmarks) == set(settings.benchmarks)
    assert set(kid_run.METHODS) >= {"sft", "fkd", "rkd", "imitkd", "gkd_rkl", "fdistill", "seqkd", "kid"}


@pytest.mark.slow
def test_kid_study_end_to_end_with_few_steps(tmp_path):
    """Both datasets, two methods, one seed, a few steps: every step runs and the tables are written
    (needs ../shared/data for GeoQuery)."""
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "text2sql" / "geoquery").exists():
        pytest.skip("needs the real GeoQuery in ../shared/data")
    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "kid"
    command = [sys.executable, str(REPO / "experiments" / "kid_text2sql" / "run.py"), "--out", str(out),
               "--seeds", "0", "--methods", "sft,kid,seqkd", "trainer.max_steps=6", "data.limit_eval=12",
               "loop.max_new_tokens=12", "trainer.val_check_interval=3"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    assert "| sqlgen EX | sqlgen TS | geoquery EX | geoquery TS | average | Δ vs sft | step vs sft |" in report
    assert "| kid | sft | geoquery | llama-xs | llama-m | 1 | 12 |" in report
    assert "KL_FROM_TEACHER" in (out / "report" / "diagnostics" / "report.md").read_text()
