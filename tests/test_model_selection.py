"""Model selection (`select_by`): the weights of the best validation are the ones saved and scored,
which the paper's final fine-tuning stage starts from; and the no-label setting, where validation
and model selection see only the teacher's outputs."""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import partial

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from kdlight import Run, train
from kdlight.data.module import DataSpec, TaskDataModule
from kdlight.data.tokenizer import TokenizerSpec
from kdlight.losses import ForwardKL
from kdlight.methods import Method
from kdlight.methods.base import PrepareContext
from kdlight.methods.teacher_outputs import PseudoTargets
from kdlight.models import Decoding, ModelSpec, target_logits
from kdlight.targets.store import TargetStore
from kdlight.tasks.nlg import NlgGenSource, NlgTask
from kdlight.training.module import LoopOptions
from kdlight.training.teacher import LiveTeacher, StoredTeacherSpec
from tests.helpers import TINY_T5, tiny_model
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


def nlggen(labeled: int | None, **task) -> NlgTask:
    return NlgTask(NlgGenSource(n_train=40, n_valid=10, n_test=10), labeled=labeled, prompt="{input}\nText:", **task)


def test_the_no_label_setting_trains_and_selects_on_a_black_box_teachers_outputs_only(tokenizer, tmp_path):
    """No gold at all: a stored teacher's outputs (written by one of kdlight's own teachers, with
    top-k log-probabilities) are the only targets, for training and for validation; only the test
    split is scored against gold."""
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    spec = DataSpec(nlggen(labeled=0, dev_split="valid"), Decoding("beam", num_beams=2, max_new_tokens=12),
                    batch_size=8, eval_batch_size=16, max_prompt_tokens=48, max_target_tokens=16,
                    validation_targets="teacher")
    dm = TaskDataModule(spec, "nlggen", use_unlabeled=True)
    dm.connect(tokenizer)
    dm.setup()
    assert not dm.train_examples and len(dm.unlabeled_examples) == 40  # no labels
    # The black-box teacher: a tiny kdlight teacher's outputs for every training and validation input.
    teacher = LiveTeacher(tiny_model(tokenizer, "t5", seed=1))
    prompts = dm.train_prompts() + [replace(p, index=1000 + p.index) for p in dm.validation_prompts()]
    teacher.outputs(PrepareContext(prompts, teacher, tokenizer, len(tokenizer)), Decoding("sample", max_new_tokens=12,
                    num_return_sequences=2), top_k=8, batch_size=16, cache_dir=str(tmp_path / "teacher"))
    store = next((tmp_path / "teacher" / "teacher_outputs").glob("*.jsonl"))

    pt = Method("pt", PseudoTargets(None, Decoding("sample", max_new_tokens=12, num_return_sequences=2)), ForwardKL(),
                ce_weight=0.0)
    run = Run(data=spec, student=ModelSpec("student", "t5", TINY_T5), method=pt,
              teacher=StoredTeacherSpec("black box", str(store)), tokenizer=TokenizerSpec(str(tokenizer_dir)),
              trainer={"accelerator": "cpu", "devices": 1, "max_steps": 6, "val_check_interval": 2,
                       "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False},
              select_by="val/ce", loop=LoopOptions(warmup_steps=1))
    metrics = train(run, tmp_path / "run").metrics
    assert metrics["steps"] == 6 and metrics["selected_step"] in (2, 4, 6)
    assert {"eval/bleu", "eval/rougeL"} <= set(metrics) and metrics["eval/n"] == 10  # test split, scored on gold
    # The run validated on the teacher's first output for each validation input, not on gold: its
    # final val/ce is the saved model's CE on those outputs.
    saved = TargetStore.load(store)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "model").eval()

    def held_out_ce() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in dm.val_dataloader():
                mask = batch.target_mask.bool()
                logits = target_logits(model, batch, len(tokenizer))[mask.bool()]
                total += float(torch.nn.functional.cross_entropy(logits, batch.target_ids[mask], reduction="sum"))
                count += int(mask.sum())
        return total / count

    on_gold = held_out_ce()
    dm.set_validation_targets({i: saved.lookup(p.text)[0].ids for i, p in enumerate(dm.validation_prompts())})
    assert metrics["val/ce"] == pytest.approx(held_out_ce(), rel=1e-4)
    assert metrics["val/ce"] != pytest.approx(on_gold, rel=1e-3)  # (an untrained student: close, not equal)


def test_validating_on_teacher_outputs_needs_a_validation_split_apart_from_the_test_split(tokenizer, tmp_path):
    spec = DataSpec(nlggen(labeled=0), validation_targets="teacher", max_prompt_tokens=48)
    run = Run(data=spec, student=ModelSpec("student", "t5", TINY_T5), method=Method(
              "pt", PseudoTargets(None, Decoding("sample", max_new_tokens=8)), ForwardKL(), ce_weight=0.0),
              teacher=ModelSpec("teacher", "t5", TINY_T5), trainer={"accelerator": "cpu", "devices": 1, "max_steps": 2})
    with pytest.raises(ValueError, match="dev_split=valid"):
        train(run, tmp_path / "run")
    with pytest.raises(ValueError, match="both 'test'"):
        nlggen(labeled=0, dev_split="test")
