"""Fault tolerance: kill -9 mid-epoch, re-run the same command, end exactly where an uninterrupted run ends."""

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
import torch
from safetensors.torch import load_file


SETTINGS = ["data.limit_train=64", "data.batch_size=8", "data.limit_eval=8",
            "trainer.max_steps=40", "trainer.val_check_interval=18", "checkpoint_every_n_steps=5",
            "loop.warmup_steps=2", "data.decoding.max_new_tokens=16", "threads=1", "trainer.log_every_n_steps=1"]


TIMING = ("step_time_s", "fit_time_s", "train/generation_s")  # differ between any two runs


def csv_rows(run: Path, leave_out: tuple[str, ...] = TIMING) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in leave_out} for row in csv.DictReader(f)]


def command(folder: Path, overrides: list[str] | tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "kdlight.cli.train", *overrides, f"hydra.run.dir={folder}"]


def train(folder: Path, overrides: list[str] | tuple[str, ...], env: dict, killed: bool = False) -> None:
    """`kdlight-train` into `folder`; it must succeed, or (`killed`) end by SIGKILL."""
    done = subprocess.run(command(folder, overrides), capture_output=True, text=True, env=env, timeout=600,
                          cwd=Path(__file__).parents[1])
    assert (done.returncode == -signal.SIGKILL) if killed else (done.returncode == 0), done.stderr[-3000:]


def assert_same_run(whole: Path, resumed: Path) -> dict:
    """The resumed run's metrics (all but timings) and weights equal the uninterrupted run's; its metrics."""
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    weights_a = load_file(whole / "model" / "model.safetensors")
    weights_b = load_file(resumed / "model" / "model.safetensors")
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=1e-6)
    return b


# gkd: random draws and student sampling at every step; lora: the checkpoint holds only the
# adapters, the frozen base is rebuilt on resume.
@pytest.mark.parametrize("method, extra", [("sft", ()), ("gkd", ()),
                                           ("sft", ("student.lora={r: 4, alpha: 8, dropout: 0.0}",))],
                         ids=["sft", "gkd", "sft-lora"])
def test_kill_9_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path, method, extra):
    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    overrides = [*SETTINGS, f"method={method}", *extra]
    train(tmp_path / "whole", overrides, env)

    folder = tmp_path / "killed"
    job = subprocess.Popen(command(folder, overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = folder / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if last.exists() and torch.load(last, weights_only=False, map_location="cpu")["global_step"] >= 15:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(job.pid, signal.SIGKILL)  # mid-epoch: 8 batches an epoch, killed after step 15
    job.wait()
    killed_at = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert 15 <= killed_at < 40 and killed_at % 8 != 0
    saved = torch.load(last, weights_only=False, map_location="cpu")["state_dict"]
    assert saved and all("lora_" in k for k in saved) == bool(extra)  # LoRA: the adapters, and only them
    assert not (folder / "metrics.json").exists()

    train(folder, overrides, env)
    b = assert_same_run(tmp_path / "whole", folder)
    assert b["steps"] == 40 and b["timed_steps"] == 40  # the first attempt's step times kept
    # The CSV log of the resumed run holds the rows from before the kill: the same as uninterrupted.
    assert csv_rows(folder) == csv_rows(tmp_path / "whole")

    # Killed during the final evaluation (training done, no metrics.json yet): the re-run resumes
    # from the end-of-fit checkpoint, evaluates again and logs the same rows, none twice.
    (folder / "metrics.json").unlink()
    train(folder, overrides, env)
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 40
    assert_same_run(tmp_path / "whole", folder)
    assert csv_rows(folder) == csv_rows(tmp_path / "whole")


def test_resumed_twice_from_the_end_of_an_epoch_matches_an_uninterrupted_run(tmp_path):
    """Killed right after the checkpoint at the end of epoch 2, resumed, killed again at the end of
    epoch 4 (a validation between), resumed: the same run as one never stopped. Lightning counts
    the epochs of a run resumed at an epoch's end one short; a second such resume then replayed an
    epoch's data when the order followed Lightning's epoch number (a run requeued twice by SLURM
    found it)."""
    settings = ["data.limit_train=64", "data.batch_size=8", "data.limit_eval=8", "trainer.max_steps=56",
                "trainer.val_check_interval=20", "checkpoint_every_n_steps=8", "loop.warmup_steps=2",
                "data.decoding.max_new_tokens=8", "threads=1", "trainer.log_every_n_steps=1", "method=sft"]
    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    train(tmp_path / "whole", settings, env)
    folder = tmp_path / "twice"
    last = folder / "checkpoints" / "last.ckpt"
    for step in (16, 32):  # 8 batches an epoch: the ends of epochs 1 and 3 (0-based)
        train(folder, [*settings, "+callbacks.kill._target_=tests.helpers.KillAt", f"+callbacks.kill.step={step}"],
              env, killed=True)
        assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == step
    train(folder, settings, env)
    assert assert_same_run(tmp_path / "whole", folder)["steps"] == 56
