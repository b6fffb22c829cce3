"""Model selection (`select_by`): the weights of the best validation are the ones saved and scored,
which the paper's final fine-tuning stage starts from."""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import partial

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM

from kdlight import Run, train
from kdlight.training.module import LoopOptions
from tests.test_api import data, task, tiny


def test_the_best_validation_is_saved_and_scored_not_the_last(tmp_path):
    out = tmp_path / "run"
    # Eight training examples and many steps: the student overfits, so the last validation is not the best.
    run = Run(data=replace(data(task(tmp_path / "data")), limit_train=8), student=tiny("student"),
              optimizer=partial(torch.optim.AdamW, lr=0.03), loop=LoopOptions(warmup_steps=2),
              trainer={"accelerator": "cpu", "devices": 1, "max_steps": 16, "val_check_interval": 2, "check_val_every_n_epoch": None,
                       "num_sanity_val_steps": 0, "enable_progress_bar": False},
              logger=CSVLogger(out, name="", version=""), select_by="val/ce", seed=0)
    metrics = train(run, out).metrics
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    validations = {int(r["step"]): float(r["val/ce"]) for r in rows if r.get("val/ce")}
    during_fit = {step: ce for step, ce in list(validations.items())[:-1]}  # the last row: the final validation
    best_step = min(during_fit, key=during_fit.get)
    assert len(during_fit) == 8 and best_step != max(during_fit), during_fit  # the best is not the last one
    assert metrics["selected_step"] == best_step + 1  # logged at the step index, saved after that step's update
    assert metrics["selected_val_ce"] == pytest.approx(during_fit[best_step], rel=1e-5)
    assert metrics["val/ce"] == pytest.approx(during_fit[best_step], rel=1e-5)  # the final numbers are its numbers
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    saved = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    for name, value in saved.items():
        assert torch.equal(value, best["state_dict"][f"student.{name}"]), name
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 16  # the resume point is still the end of training


def test_select_by_names_what_it_accepts(tmp_path):
    run = Run(data=data(task(tmp_path / "data")), student=tiny("student"), select_by="eval/bleu",
              trainer={"accelerator": "cpu", "devices": 1, "max_steps": 2})
    with pytest.raises(ValueError, match="select_by must be one of .*val/ce"):
        train(run, tmp_path / "run")
