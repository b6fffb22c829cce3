"""The Python API and the generic JSONL task: train() and evaluate() with typed components and no
Hydra, unlabeled inputs, per-group scores, and `kdlight-eval` on a saved model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from kdlight import EvalRun, Run, evaluate, train
from kdlight.data.module import DataSpec, TaskDataModule
from kdlight.data.tokenizer import TokenizerSpec
from kdlight.losses import ForwardKL
from kdlight.methods import GoldSequences, Method
from kdlight.methods.teacher_outputs import TeacherOutputs
from kdlight.models import Decoding, ModelSpec
from kdlight.tasks.jsonl import JsonlTask
from kdlight.training.objective import micro_batch_loss
from tests.conftest import REPO
from tests.helpers import TINY_LLAMA, tiny_model

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]


def write_task(folder: Path, n_train: int = 48, n_unlabeled: int = 16, n_eval: int = 12) -> tuple[Path, Path]:
    """Three kinds of word games (the groups), some training lines without a target."""
    folder.mkdir(parents=True, exist_ok=True)

    def line(i: int, labeled: bool = True) -> dict:
        words = [WORDS[i // 8 ** k % 8] for k in range(3)]  # distinct for every i < 512
        kind = ("copy", "reverse", "first")[i % 3]
        target = {"copy": words, "reverse": words[::-1], "first": words[:1]}[kind]
        return {"prompt": f"{kind}: {' '.join(words)} =", "answer": " ".join(target) if labeled else None,
                "domain": kind, "source": "games"}

    train_lines = [line(i) for i in range(n_train)] + [line(100 + i, labeled=False) for i in range(n_unlabeled)]
    (folder / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in train_lines))
    (folder / "dev.jsonl").write_text("".join(json.dumps(line(200 + i)) + "\n" for i in range(n_eval)))
    return folder / "train.jsonl", folder / "dev.jsonl"


def task(folder: Path) -> JsonlTask:
    train_file, dev_file = write_task(folder)
    return JsonlTask(str(train_file), str(dev_file), target_field="answer", group_field="domain")


def tiny(name: str, **config) -> ModelSpec:
    return ModelSpec(name, "llama", {**TINY_LLAMA, "hidden_size": 32, **config})


def data(jsonl: JsonlTask) -> DataSpec:
    return DataSpec(jsonl, Decoding(max_new_tokens=8), batch_size=8, eval_batch_size=16, max_prompt_tokens=32,
                    max_target_tokens=12)


TRAINER = {"accelerator": "cpu", "devices": 1, "max_steps": 6, "val_check_interval": 3, "enable_progress_bar": False,
           "enable_model_summary": False, "num_sanity_val_steps": 0}


def test_jsonl_task_splits_labeled_unlabeled_and_eval_with_groups_ids_and_meta(tmp_path):
    jsonl = task(tmp_path)
    train_set, unlabeled, dev = jsonl.load("train"), jsonl.load("unlabeled"), jsonl.load("eval")
    assert (len(train_set), len(unlabeled), len(dev)) == (48, 16, 12)
    assert all(e.labeled for e in train_set) and not any(e.labeled for e in unlabeled)
    first = train_set[0]
    assert (first.id, first.prompt, first.target, first.group) == ("train.jsonl:1", "copy: red red red =",
                                                                   "red red red", "copy")
    assert first.meta == {"domain": "copy", "source": "games"}
    assert unlabeled[0].id == "train.jsonl:49" and {e.group for e in dev} == {"copy", "reverse", "first"}


@pytest.mark.parametrize("content,match", [
    ('{"prompt": "a", "answer": "b"}\n{"prompt": "c", oops}\n', r"train.jsonl: line 2 is not valid JSON"),
    ('{"prompt": "a", "answer": "b"}\n\n{"question": "c"}\n', r"train.jsonl: line 3 has no text in 'prompt'"),
    ('{"prompt": "a", "answer": 3}\n', r"train.jsonl: line 1: 'answer' must be text or null, got int"),
    ('[1, 2]\n', r"train.jsonl: line 1 is a list, expected an object"),
])
def test_bad_jsonl_lines_are_named_by_file_line_and_field(tmp_path, content, match):
    jsonl = task(tmp_path)
    Path(jsonl.files["train"]).write_text(content)
    with pytest.raises(ValueError, match=match):
        jsonl.load("train")


def test_an_evaluation_line_without_a_target_is_refused(tmp_path):
    jsonl = task(tmp_path)
    Path(jsonl.files["eval"]).write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(ValueError, match=r"dev.jsonl: 1 evaluation lines have no 'answer' \(first: dev.jsonl:2\)"):
        jsonl.load("eval")


def test_unlabeled_rows_never_carry_a_gold_loss(tmp_path, tokenizer):
    jsonl = task(tmp_path)
    dm = TaskDataModule(data(jsonl), "games", use_unlabeled=True)
    dm.connect(tokenizer)
    dm.setup()
    items = dm.train_prompts()
    assert len(items) == 64 and sum(not p.labeled for p in items) == 16
    batch = next(b for b in dm.train_dataloader() if 0 < int(b.labeled.sum()) < b.size)  # a mixed batch
    assert not batch.target_mask[~batch.labeled].any()  # an unlabeled row has no gold token
    labeled_only = batch.take(batch.labeled.nonzero().flatten())
    method, student = Method("fkd", GoldSequences(), ForwardKL()), tiny_model(tokenizer, seed=0)
    teacher = tiny_model(tokenizer, seed=1)
    from kdlight.training.teacher import LiveTeacher

    both = micro_batch_loss(method, student, LiveTeacher(teacher), batch, batch, len(tokenizer)).terms
    alone = micro_batch_loss(method, student, LiveTeacher(teacher), labeled_only, labeled_only, len(tokenizer)).terms
    for name in ("ce", "kd_fkl"):  # the unlabeled rows add nothing to either term
        assert float(both[name].total.detach()) == pytest.approx(float(alone[name].total.detach()), rel=1e-5)


def test_train_from_python_on_a_jsonl_task_then_distil_using_its_unlabeled_inputs(tmp_path):
    jsonl = task(tmp_path / "data")
    teacher = train(Run(data=data(jsonl), student=tiny("teacher"), trainer=TRAINER, data_name="games", seed=3),
                    tmp_path / "teacher")
    assert teacher.model_dir == tmp_path / "teacher" / "model" and (teacher.model_dir / "config.json").exists()
    m = teacher.metrics
    assert (m["steps"], m["data"], m["eval/n"], m["label"]) == (6, "games", 12, "sft")
    assert {"eval/em/copy", "eval/em/reverse", "eval/em/first", "eval/em_macro", "eval/em_micro"} <= set(m)
    assert m["eval/n/copy"] + m["eval/n/reverse"] + m["eval/n/first"] == 12
    assert json.loads((tmp_path / "teacher" / "metrics.json").read_text()) == m

    outputs = TeacherOutputs(str(tmp_path / "cache"), Decoding(max_new_tokens=8))
    seqkd = Method("seqkd", outputs, None, ce_on="sequences")
    student = train(Run(data=data(jsonl), student=tiny("student", hidden_size=16), method=seqkd,
                        teacher=ModelSpec("teacher", path=str(teacher.model_dir)), trainer=TRAINER,
                        optimizer=partial(torch.optim.AdamW, lr=3e-3), data_name="games"), tmp_path / "student")
    assert student.metrics["teacher"] == "teacher" and student.metrics["steps"] == 6
    store = next((tmp_path / "cache" / "teacher_outputs").glob("*.jsonl")).read_text().splitlines()
    prompts = {json.loads(line)["prompt"] for line in store[1:]}
    assert len(prompts) == 64  # the teacher wrote a target for every labeled *and* unlabeled input
    assert {e.prompt for e in jsonl.load("unlabeled")} <= prompts


def test_evaluate_from_python_and_kdlight_eval_score_a_saved_model_as_training_did(tmp_path):
    jsonl = task(tmp_path / "data")
    trained = train(Run(data=data(jsonl), student=tiny("m"), trainer=TRAINER, data_name="games"), tmp_path / "run")
    again = evaluate(EvalRun(data=data(jsonl), model=ModelSpec("m", path=str(trained.model_dir)), data_name="games"),
                     tmp_path / "eval")
    assert again.metrics["eval/em"] == trained.metrics["eval/em"] and again.metrics["stage"] == "eval"
    before = [json.loads(x)["prediction"] for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    after = [json.loads(x)["prediction"] for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert before == after  # the same model, the same decoding: the same predictions

    env = {**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    files = [f"data.task.train_file={jsonl.files['train']}", f"data.task.eval_file={jsonl.files['eval']}",
             "data.task.target_field=answer", "data.task.group_field=domain", "data.decoding.max_new_tokens=8",
             "data.max_prompt_tokens=32"]
    done = subprocess.run([sys.executable, "-m", "kdlight.cli.eval", "data=jsonl", *files, "model=hf",
                           f"model.path={trained.model_dir}", f"hydra.run.dir={tmp_path / 'cli'}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli["eval/em"] == trained.metrics["eval/em"] and cli["eval/n"] == 12 and cli["data"] == "jsonl"
    untrained = subprocess.run([sys.executable, "-m", "kdlight.cli.eval", "data=jsonl", *files, "model=llama-xs",
                                f"hydra.run.dir={tmp_path / 'zero'}"], capture_output=True, text=True, env=env,
                               timeout=600, cwd=REPO)
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    zero = json.loads((tmp_path / "zero" / "metrics.json").read_text())
    assert (zero["label"], zero["model"], zero["eval/n"]) == ("untrained", "llama-xs", 12)
    assert len((tmp_path / "zero" / "predictions.jsonl").read_text().splitlines()) == 12


def test_a_teacher_known_only_by_its_outputs_file_drives_sparse_kd_with_no_model_loaded(tmp_path):
    from kdlight.losses import ForwardKL
    from kdlight.training.teacher import StoredTeacherSpec

    jsonl = task(tmp_path / "data")
    teacher = train(Run(data=data(jsonl), student=tiny("teacher"), trainer=TRAINER, data_name="games"),
                    tmp_path / "teacher")
    # A live teacher writes its outputs with their top-8 log-probabilities: the file a stored teacher reads.
    with_logprobs = TeacherOutputs(str(tmp_path / "cache"), Decoding(max_new_tokens=8), top_k_logprobs=8)
    train(Run(data=data(jsonl), student=tiny("s"), method=Method("seqkd", with_logprobs, None, ce_on="sequences"),
              teacher=ModelSpec("teacher", path=str(teacher.model_dir)), trainer=TRAINER), tmp_path / "live")
    store = next((tmp_path / "cache" / "teacher_outputs").glob("*.jsonl"))

    stored = StoredTeacherSpec("gpt", str(store))
    sparse = Method("seqkd_fkl", TeacherOutputs(None, Decoding(max_new_tokens=8)), ForwardKL(), ce_weight=0.0,
                    ce_on="sequences")
    result = train(Run(data=data(jsonl), student=tiny("s"), method=sparse, teacher=stored, trainer=TRAINER,
                       tokenizer=TokenizerSpec(path=str(teacher.model_dir))), tmp_path / "stored")
    assert result.metrics["teacher"] == "gpt" and result.metrics["teacher_params"] is None  # no model loaded
    assert result.metrics["steps"] == 6 and "val/kl_from_teacher" not in result.metrics
    with pytest.raises(ValueError, match="not the teacher's own outputs; a stored teacher .* has distributions"):
        train(Run(data=data(jsonl), student=tiny("s"), method=Method("fkd", GoldSequences(), ForwardKL()),
                  teacher=stored, trainer=TRAINER), tmp_path / "refused")
