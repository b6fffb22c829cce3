"""Tiny components built in code (not through Hydra) for the module-level tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from kdlight.data.batch import Batch, collate
from kdlight.models import ModelSpec, build_model

TINY_LLAMA = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
TINY_T5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, dropout_rate=0.0)


def tiny_model(tokenizer, family: str = "llama", seed: int = 0, pad_multiple: int = 1, **overrides):
    torch.manual_seed(seed)
    config = {**(TINY_T5 if family == "t5" else TINY_LLAMA), **overrides}
    return build_model(ModelSpec(f"tiny-{family}", family, config, pad_vocab_multiple=pad_multiple), tokenizer)


def toy_batches(tokenizer, n: int = 8, seed: int = 0) -> list[Batch]:
    """Random prompt/target pairs of varied lengths, one batch of n."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    prompts = [torch.randint(5, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    targets = [torch.randint(5, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
               + [tokenizer.eos_token_id] for _ in range(n)]
    return [collate(prompts, targets, list(range(n)), tokenizer.pad_token_id)]


def cpu_trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs)


def loader(batches: list[Batch]) -> DataLoader:
    return DataLoader(batches, batch_size=None)


def multirun(sweep_dir: Path, overrides: list[str], cache: Path, fails: bool = False) -> subprocess.CompletedProcess:
    """`kdlight-train -m <overrides>` into sweep_dir, as a user runs it. The command must exit 0,
    or (`fails`) non-zero: a sweep with a failed job exits non-zero once every job has run."""
    command = [sys.executable, "-m", "kdlight.cli.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "KDLIGHT_CACHE": str(cache)},
                          timeout=600)
    assert (done.returncode != 0) == fails, done.stderr[-3000:]
    return done


def fit_spawned(make_trainer, *args, **kwargs) -> L.Trainer:
    """`make_trainer().fit(*args, **kwargs)` for a `ddp_spawn` trainer, retried once if a worker
    aborts with SIGABRT.

    On this machine a spawned gloo worker sometimes aborts in C++ teardown, after its work is done
    ("terminate called without an active exception"; about 1 spawn in 15, also with the process
    group destroyed first), which fails the whole spawn. The run is deterministic, so one retry
    from scratch gives the same result; any other failure, or a second abort, is raised.
    """
    from torch.multiprocessing.spawn import ProcessExitedException

    for attempt in (1, 2):
        trainer = make_trainer()
        try:
            trainer.fit(*args, **kwargs)
            return trainer
        except ProcessExitedException as error:
            if attempt == 2 or getattr(error, "signal_name", None) != "SIGABRT":
                raise
            warnings.warn(f"a spawned worker aborted after its work ({error}); running the spawn once more",
                          stacklevel=2)
    raise AssertionError("unreachable")


def sqlgen_datamodule(sqlgen_root, tokenizer, n_train: int):
    """A small text-to-SQL data module on the generated sqlgen data: n_train training examples,
    batches of 4, 4 evaluation examples."""
    from kdlight.data.module import DataSpec, TaskDataModule
    from kdlight.tasks.text2sql import PromptParts, SpiderSource, Text2SQLTask

    task = Text2SQLTask(SpiderSource(str(sqlgen_root)), PromptParts(sample_values=False))
    dm = TaskDataModule(DataSpec(task, batch_size=4, eval_batch_size=8, max_prompt_tokens=64, limit_train=n_train,
                                 limit_eval=4), "sqlgen")
    dm.connect(tokenizer)
    dm.setup()
    return dm


class KillAt(L.Callback):
    """Kills its own process with SIGKILL (as a scheduler or the OOM killer does) once the
    checkpoint of step `step` is written: at the start of the step after it (Lightning runs
    checkpoint callbacks after the others, so the next batch's start is the first point after it)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class HoldUntilRequeued(L.Callback):
    """Holds the run at the start of the step after step `step` (its checkpoint written) for as
    long as it is the first attempt of a SLURM job, so that SLURM's time limit, not the machine's
    speed, stops that attempt; a requeued attempt (SLURM_RESTART_COUNT >= 1) runs through."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
            while True:  # until SLURM's signal ends the attempt
                time.sleep(1)
