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
