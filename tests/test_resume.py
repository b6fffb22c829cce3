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


def csv_rows(run: Path, leave_out: tuple[str, ...]) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in leave_out} for row in csv.DictReader(f)]


def command(folder: Path, method: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "kdlight.cli.train", *SETTINGS, f"method={method}", *extra,
            f"hydra.run.dir={folder}"]


# gkd: random draws and student sampling at every step; lora: the checkpoint holds only the
# adapters, the frozen base is rebuilt on resume.
@pytest.mark.parametrize("method, extra", [("sft", ()), ("gkd", ()),
                                           ("sft", ("student.lora={r: 4, alpha: 8, dropout: 0.0}",))],
                         ids=["sft", "gkd", "sft-lora"])
def test_kill_9_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path, method, extra):
    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    whole = subprocess.run(command(tmp_path / "whole", method, extra), capture_output=True, text=True, env=env,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    folder = tmp_path / "killed"
    job = subprocess.Popen(command(folder, method, extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
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

    again = subprocess.run(command(folder, method, extra), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((folder / "metrics.json").read_text())
    assert b["steps"] == a["steps"] == 40 and b["timed_steps"] == 40  # the first attempt's step times kept
    timing = ("step_time_s", "fit_time_s", "train/generation_s")
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    # The CSV log of the resumed run holds the rows from before the kill: the same as uninterrupted.
    assert csv_rows(folder, timing) == csv_rows(tmp_path / "whole", timing)
    weights_a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    weights_b = load_file(folder / "model" / "model.safetensors")
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=1e-6)

    # Killed during the final evaluation (training done, no metrics.json yet): the re-run resumes
    # from the end-of-fit checkpoint, evaluates again and logs the same rows, none twice.
    (folder / "metrics.json").unlink()
    again = subprocess.run(command(folder, method, extra), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 40
    b = json.loads((folder / "metrics.json").read_text())
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert csv_rows(folder, timing) == csv_rows(tmp_path / "whole", timing)


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

    def run(folder: Path, *extra: str, killed: bool = False) -> None:
        done = subprocess.run([sys.executable, "-m", "kdlight.cli.train", *settings, *extra, f"hydra.run.dir={folder}"],
                              capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[1])
        assert (done.returncode == -signal.SIGKILL) if killed else (done.returncode == 0), done.stderr[-3000:]

    run(tmp_path / "whole")
    folder = tmp_path / "twice"
    last = folder / "checkpoints" / "last.ckpt"
    for step in (16, 32):  # 8 batches an epoch: the ends of epochs 1 and 3 (0-based)
        run(folder, "+callbacks.kill._target_=tests.helpers.KillAt", f"+callbacks.kill.step={step}", killed=True)
        assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == step
    run(folder)
    timing = ("step_time_s", "fit_time_s", "train/generation_s")
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((folder / "metrics.json").read_text())
    assert b["steps"] == a["steps"] == 56
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    weights_a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    weights_b = load_file(folder / "model" / "model.safetensors")
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=1e-6)
