"""Every fault ends clearly: no orphaned workers, whole-run bookkeeping after a resume, named data
errors, nothing silently trained or evaluated on nothing, non-finite losses, full disks, sweeps
that report their failures, W&B names that tell jobs apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from kdlight.cli.train import train
from tests.conftest import REPO
from tests.test_configs import compose_cfg, wandb_records


def env_for(tmp_path: Path) -> dict:
    return {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}


def train_command(folder: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "kdlight.cli.train", *overrides, f"hydra.run.dir={folder}"]


# --- worker processes die with their parent --------------------------------------------------------

SETTINGS = ["method=sft", "data.limit_train=64", "data.batch_size=8", "trainer.max_steps=12",
            "trainer.val_check_interval=6", "checkpoint_every_n_steps=4", "data.decoding.max_new_tokens=12",
            "data.task.scorer.parallel_from=2", "threads=1"]  # score the 300 questions in 2 worker processes


def test_a_run_killed_while_scoring_leaves_no_process_behind_and_its_rerun_reports_the_whole_run(tmp_path):
    env, folder = env_for(tmp_path), tmp_path / "run"
    job = subprocess.Popen(train_command(folder, *SETTINGS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env)
    parent = psutil.Process(job.pid)
    deadline, workers = time.monotonic() + 600, []
    while time.monotonic() < deadline and job.poll() is None:
        workers = parent.children(recursive=True)
        if len(workers) >= 2:  # the scoring pool is up (its workers and multiprocessing's tracker)
            break
        time.sleep(0.05)
    assert job.poll() is None and len(workers) >= 2, "the run ended before its scoring workers could be seen"
    workers = parent.children(recursive=True)  # every one alive now, also any started since
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"processes outlived their parent: {[p.pid for p in alive]}"
    assert not (folder / "metrics.json").exists()
    before = step_timer_state(folder / "checkpoints" / "last.ckpt")  # what the killed attempt measured

    again = subprocess.run(train_command(folder, *SETTINGS), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    # The whole run is reported: every step the killed attempt recorded is counted (no timing asserted).
    assert metrics["steps"] == metrics["timed_steps"] == len(before["times"]) == 12


def step_timer_state(checkpoint: Path) -> dict:
    """The step timer's saved state (its step times, its training time) in a checkpoint."""
    callbacks = torch.load(checkpoint, weights_only=False, map_location="cpu")["callbacks"]
    return next(state for key, state in callbacks.items() if key.startswith("StepTimer"))


# --- data errors name the file, the example and the field -------------------------------------------

def spider_copy(sqlgen_root: Path, folder: Path) -> Path:
    import shutil

    shutil.copytree(sqlgen_root, folder)
    return folder


def run_on(folder: Path, tmp_path: Path, *overrides: str):
    cfg = compose_cfg(["debug=fdr", "data=spider", f"data.task.source.root={folder}", *overrides], tmp_path)
    return train(cfg)


@pytest.mark.parametrize("damage,match", [
    (lambda d: _edit_json(d / "train.json", lambda x: [{**x[0], "query": None}, *x[1:]]),
     r"train.json: example 0: 'query' must be text, got null"),
    (lambda d: _edit_json(d / "train.json", lambda x: {"a": 1, "data": x}),
     r"train.json: expected a list of examples, got a JSON dict \(keys: \['a', 'data'\]\)"),
    (lambda d: (d / "tables.json").write_text((d / "tables.json").read_text()[:200]),
     r"tables.json: not valid JSON \(line \d+\)"),
    (lambda d: _edit_json(d / "tables.json", lambda x: [_without(x[0], "column_types"), *x[1:]]),
     r"tables.json: schema 0 \(\w+\) has no \['column_types'\]"),
    (lambda d: next((d / "database").glob("*/*_ts1.sqlite")).parent.joinpath(
        next((d / "database").glob("*/*_ts1.sqlite")).parent.name + ".sqlite").write_bytes(b"not a database" * 100),
     r"\.sqlite: not a readable SQLite database \(file is not a database\)"),
])
def test_data_errors_name_the_file_example_and_field(sqlgen_root, tmp_path, damage, match):
    folder = spider_copy(sqlgen_root, tmp_path / "spider")
    damage(folder)
    with pytest.raises((ValueError, KeyError), match=match):
        run_on(folder, tmp_path, "data.task.prompt.sample_values=true")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def _without(entry: dict, key: str) -> dict:
    return {k: v for k, v in entry.items() if k != key}


def _edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


# --- nothing to train or to evaluate ------------------------------------------------------------------

@pytest.mark.parametrize("overrides,match", [
    (["data.limit_train=0"], r"data 'sqlgen': nothing to train on: no training examples \(data.limit_train=0\)"),
    (["trainer.max_steps=0", "~trainer.fast_dev_run"], r"trainer.max_steps=0.*nothing to train.*kdlight-eval"),
    (["data.limit_eval=0"], r"data 'sqlgen' \(evaluation split\): nothing to evaluate"),
])
def test_nothing_to_train_or_evaluate_is_an_error_before_training(tmp_path, overrides, match):
    cfg = compose_cfg(["debug=fdr", *overrides], tmp_path)
    with pytest.raises(ValueError, match=match):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_an_empty_split_file_is_an_error_before_training(sqlgen_root, tmp_path):
    folder = spider_copy(sqlgen_root, tmp_path / "spider")
    (folder / "dev.json").write_text("[]")
    with pytest.raises(ValueError, match="evaluation split.*nothing to evaluate"):
        run_on(folder, tmp_path)
    (folder / "dev.json").write_text((sqlgen_root / "dev.json").read_text())
    (folder / "train.json").write_text("[]")
    with pytest.raises(ValueError, match="nothing to train on"):
        run_on(folder, tmp_path)


# --- a loss that is not finite stops the run ------------------------------------------------------------

def test_a_diverging_run_stops_at_the_bad_step_and_is_recorded_as_failed(tmp_path):
    folder, teachers = tmp_path / "teacher", tmp_path / "teachers"
    done = subprocess.run(train_command(folder, "stage=teacher", "debug=limit", "optimizer.lr=1e3",
                                        "loop.grad_clip=null", "trainer.max_steps=60", "data.limit_eval=4",
                                        f"paths.teachers_dir={teachers}"),
                          capture_output=True, text=True, env=env_for(tmp_path), timeout=600)
    assert done.returncode != 0
    error = (folder / "error.txt").read_text()
    assert "NonFiniteLossError" in error and "the loss is not finite" in error and "optimizer.lr" in error
    step = int(error.split("step ")[-1].split(":")[0])
    assert 1 <= step < 60  # it stopped where the loss went bad, not at the end
    assert not (folder / "model").exists() and not (folder / "metrics.json").exists()
    assert not (teachers / "sqlgen" / "llama-m").exists()  # never published


def test_metrics_files_are_always_valid_json(tmp_path):
    from kdlight.io import write_json

    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": "x"})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": "x"} and "NaN" not in text


# --- a full disk ----------------------------------------------------------------------------------------

DISK_FULL = """
import resource, signal, sys, torch
from pathlib import Path
from kdlight.io import write_atomic
from kdlight.training.checkpoint_io import AtomicCheckpointIO
folder = Path(sys.argv[1])
AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(10)}, folder / "last.ckpt")   # a good one
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                                         # writes now fail
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))                          # past 200 kB
for what, write in (("checkpoint", lambda: AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(10**6)},
                                                                             folder / "last.ckpt")),
                    ("json", lambda: write_atomic(folder / "metrics.json", "x" * 10**6))):
    try:
        write()
    except OSError as error:
        print(what, "|", error)
"""


def test_a_write_that_fails_for_lack_of_space_names_the_file_and_leaves_nothing_behind(tmp_path):
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" | ", 1) for line in done.stdout.strip().splitlines())
    assert set(lines) == {"checkpoint", "json"}
    assert f"could not write {tmp_path / 'last.ckpt'} (the write failed: is the disk full?" in lines["checkpoint"]
    assert f"could not write {tmp_path / 'metrics.json'} (no space left, or a file size limit" in lines["json"]
    assert "MiB free on its disk" in lines["json"] and "run the same command again" in lines["checkpoint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["weights"].shape == (10,)  # the good one stays


# --- sweeps and W&B ---------------------------------------------------------------------------------------

def test_wandb_names_tell_sweep_jobs_apart_and_a_sweep_is_one_group(tmp_path):
    env = {**env_for(tmp_path), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "kdlight.cli.train", "-m", "logger=wandb", "debug=limit",
                           "trainer.max_steps=2", "data.limit_eval=4", "method=sft,rkd", f"hydra.sweep.dir={sweep}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [next(r["run"] for r in wandb_records(job) if r["type"] == "run") for job in sorted(sweep.glob("[0-9]_*"))]
    names = [r["display_name"] for r in runs]  # the job's overrides, as in its folder name
    assert names[0].startswith("sft-llama-xs [") and "method=sft" in names[0] and "method=rkd" in names[1]
    assert len(set(names)) == 2 and "debug=limit" in names[0]
    assert {r["run_group"] for r in runs} == {str(sweep)}  # one group per sweep
    # A single run is a group of its own: tests/test_configs.py (its W&B test) checks that.


def test_an_error_that_is_not_a_failed_write_passes_through_unchanged(tmp_path):
    from kdlight.io import atomic_path

    with pytest.raises(RuntimeError, match="^a serialisation error$"):  # not reported as a full disk
        with atomic_path(tmp_path / "x.ckpt"):
            raise RuntimeError("a serialisation error")
    with pytest.raises(OSError, match=r"could not write .*x\.ckpt \(the write failed: .*Permission denied") as info:
        with atomic_path(tmp_path / "x.ckpt"):
            raise PermissionError(13, "Permission denied")
    assert "disk full" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left either way
