"""Budgeted distillation end to end on the generated long-tail data: what each policy buys, the
ledger's totals, tail filling, dropped rationales, a teacher's store that lacks an input, and a run
killed inside a stage that resumes with the same selections, charges and scores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from kdlight.data.module import DataSpec
from kdlight.data.tokenizer import TokenizerSpec
from kdlight.io import read_json
from kdlight.models import ModelSpec
from kdlight.models.decoding import Decoding
from kdlight.pipelines.baldistill import BudgetedDistillation, Policy, distill_under_budget
from kdlight.run.spec import Run
from kdlight.selection.annotators import StoredAnnotator
from kdlight.selection.ledger import StageSelection
from kdlight.tasks.longtail import LongTailGenSource, LongTailTask, StoredRationales
from tests.conftest import REPO
from tests.helpers import TINY_LLAMA

POLICIES = {
    "random_gold": dict(quotas="none", rank="random", tail_fill="none", targets="gold"),
    "random_cot": dict(quotas="none", rank="random", tail_fill="none"),
    "duplicate": dict(quotas="naive", rank="random", tail_fill="duplicate"),
    "active": dict(quotas="none", rank="ifd", tail_fill="none"),
    "balance": dict(quotas="naive", rank="random", tail_fill="synthesize"),
    "baldistill_n": dict(quotas="naive", rank="ifd", tail_fill="synthesize"),
    "baldistill_a": dict(quotas="adaptive", rank="ifd", tail_fill="synthesize"),
}


def ltgen(n_train: int = 120) -> LongTailTask:
    # Pool of 120 at Zipf s=2: 81, 20, 9, 5, 3, 2 examples per domain (next, last_digit, double, ...).
    return LongTailTask(LongTailGenSource(n_train=n_train, test_per_domain=3, teacher_per_domain=12))


def stored_teacher(task: LongTailTask, folder: Path, wrong_every: int = 0, synthetic_domains=None,
                   leave_out: int = 0) -> StoredAnnotator:
    """A black-box teacher's files written from the generated data's gold rationales: a rationale
    per pool text (every `wrong_every`-th distinct text with a wrong answer; the last `leave_out`
    texts missing) and the teacher split's examples as its synthetic examples."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {}
    for record in task.records("train"):
        texts.setdefault(record.text, record)
    rows = []
    for k, record in enumerate(texts.values()):
        wrong = wrong_every and k % wrong_every == 0
        answer = str(int(record.answer) + 1) if wrong else record.answer
        rows.append({"text": record.text, "rationale": record.rationale, "prediction": answer})
    rows = rows[: len(rows) - leave_out]
    (folder / "rationales.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    synthetic = [{"text": r.text, "rationale": r.rationale, "gt_choice": r.answer, "source": r.domain}
                 for r in task.records("teacher") if synthetic_domains is None or r.domain in synthetic_domains]
    (folder / "synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic))
    return StoredAnnotator(StoredRationales(str(folder), ["rationales.jsonl"], "number",
                                            synthetic_files=["synthetic.jsonl"]))


def tiny_run(task: LongTailTask, steps: int = 2, seed: int = 0) -> Run:
    return Run(data=DataSpec(task, batch_size=8, eval_batch_size=32, max_prompt_tokens=32, max_target_tokens=40,
                             decoding=Decoding(max_new_tokens=24)),
               student=ModelSpec("tiny", family="llama", config=TINY_LLAMA), tokenizer=TokenizerSpec(vocab_size=300),
               trainer={"accelerator": "cpu", "devices": 1, "max_steps": steps, "enable_progress_bar": False,
                        "enable_model_summary": False, "num_sanity_val_steps": 0},
               seed=seed, threads=1)


def selections(out: Path) -> list[StageSelection]:
    return [StageSelection.load(p) for p in sorted((out / "stages").glob("*/selection.json"))]


@pytest.mark.parametrize("name", POLICIES)
def test_no_policy_spends_more_than_its_budget_and_every_unit_is_accounted_for(name, tmp_path):
    task = ltgen()
    policy = Policy(name, budget=60, stages=3, **POLICIES[name])
    job = BudgetedDistillation(tiny_run(task), policy, stored_teacher(task, tmp_path / "teacher"))
    result = distill_under_budget(job, tmp_path / "run")

    ledger = read_json(tmp_path / "run" / "ledger.json")
    totals = ledger["totals"]
    assert totals["charged"] <= 60 and totals["budget"] == 60
    # Every unit of every stage is a real, synthesised or duplicated example, or recorded unspent.
    for stage in ledger["stages"]:
        bought = stage["real"] + stage["synthesized"] + stage["duplicated"]
        assert bought + stage["unspent"] == stage["budget"] == 20
    assert totals["charged"] == totals["real"] + totals["synthesized"]
    chosen = [i for s in selections(tmp_path / "run") for i in s.items]
    real = [i.id for i in chosen if i.origin == "real"]
    assert len(real) == len(set(real)) == totals["real"]  # no pool example is bought twice
    assert result.metrics["ledger/charged"] == totals["charged"] and result.metrics["policy"] == name
    if POLICIES[name]["quotas"] == "none":
        assert totals["synthesized"] == totals["duplicated"] == 0 and totals["unspent"] == 0
        # Without quotas the natural distribution shows: the head domain takes most of the budget.
        assert Counter(i.domain for i in chosen).most_common(1)[0][1] > 60 / 6 * 2
    else:
        # Every domain gets its quota, a shortfall filled by synthesis or duplication; a domain
        # that still falls short is named in the stage's notes (its quota passed on).
        for row in ledger["rows"]:
            bought = row["real"] + row["synthesized"] + row["duplicated"]
            notes = ledger["stages"][row["stage"]]["notes"]
            assert bought >= row["quota"] or any(n.startswith(f"{row['domain']}: quota") for n in notes), row
        assert totals["synthesized" if POLICIES[name]["tail_fill"] == "synthesize" else "duplicated"] > 0
        if POLICIES[name]["quotas"] == "naive":  # 3 or 4 per domain and stage (ties in a seeded order)
            counts = Counter(i.domain for i in chosen)
            assert set(counts) == set(task.source.domain_names) and 9 <= min(counts.values()) <= max(counts.values()) <= 12
            assert counts["previous"] >= 9  # the smallest domain has 2 real examples: 7 synthesised or repeated
    if POLICIES[name].get("targets") == "gold":
        assert all(i.target == f"The answer is {i.answer}." for i in chosen)
    else:
        assert all(i.target.endswith(f"The answer is {i.teacher_answer}.") for i in chosen if i.origin == "real")
    assert {"eval/acc_macro", "eval/acc_micro", "eval/acc_head", "eval/acc_tail"} <= set(result.metrics)
    assert result.metrics["head_domains"] == ["last_digit", "next"]  # 20 and 80 >= B/l = 10; the others < 10
    trained = [p.parent.name for p in sorted((tmp_path / "run" / "stages").glob("*/train"))]
    assert trained == (["0", "1", "2"] if POLICIES[name]["rank"] == "ifd" else ["2"])  # IFD needs each stage's student
    # The run's model/ is the last stage's student.
    assert (tmp_path / "run" / "model").resolve() == (tmp_path / "run" / "stages" / "2" / "train" / "model").resolve()
    assert (tmp_path / "run" / "model" / "config.json").exists()


def test_synthesis_and_duplication_fill_the_same_tail_quotas_and_only_synthesis_is_charged(tmp_path):
    task = ltgen()
    runs = {}
    for fill in ("synthesize", "duplicate"):
        policy = Policy(fill, budget=60, stages=3, quotas="naive", rank="random", tail_fill=fill)
        distill_under_budget(BudgetedDistillation(tiny_run(task), policy, stored_teacher(task, tmp_path / "t")),
                             tmp_path / fill)
        runs[fill] = [i for s in selections(tmp_path / fill) for i in s.items]
    synthesized, duplicated = runs["synthesize"], runs["duplicate"]
    assert [i.id for i in synthesized if i.origin == "real"] == [i.id for i in duplicated if i.origin == "real"]
    filled = Counter(i.domain for i in synthesized if i.origin == "synthetic")
    assert filled and filled == Counter(i.domain for i in duplicated if i.origin == "duplicate")
    assert all(i.charged for i in synthesized) and not any(i.charged for i in duplicated if i.origin == "duplicate")
    real_ids = {i.id for i in duplicated if i.origin == "real"}
    assert all(i.id.split("#dup")[0] in real_ids for i in duplicated if i.origin == "duplicate")
    synthetic_texts = {r.text for r in task.records("teacher")}
    assert all(i.text in synthetic_texts for i in synthesized if i.origin == "synthetic")


def test_a_domain_the_teacher_cannot_fill_passes_its_quota_on_and_an_empty_pool_leaves_budget_unspent(tmp_path):
    task = ltgen()
    # The teacher can synthesise only for one domain: the other tail domains' shortfalls go to
    # domains with pool left, so nothing is unspent.
    annotator = stored_teacher(task, tmp_path / "t", synthetic_domains={"first_digit"})
    policy = Policy("balance", budget=60, stages=3, quotas="naive", rank="random", tail_fill="synthesize")
    distill_under_budget(BudgetedDistillation(tiny_run(task), policy, annotator), tmp_path / "run")
    ledger = read_json(tmp_path / "run" / "ledger.json")
    assert ledger["totals"]["unspent"] == 0 and ledger["totals"]["charged"] == 60
    assert {i.domain for s in selections(tmp_path / "run") for i in s.items if i.origin == "synthetic"} == {"first_digit"}
    assert any("passed on to other domains" in note for stage in ledger["stages"] for note in stage["notes"])
    # A budget larger than the pool: what no one can use is recorded, never silently lost.
    small = ltgen(n_train=30)
    policy = Policy("random_cot", budget=45, stages=3, quotas="none", rank="random", tail_fill="none")
    result = distill_under_budget(BudgetedDistillation(tiny_run(small), policy, stored_teacher(small, tmp_path / "s")),
                                  tmp_path / "small")
    assert result.metrics["ledger/real"] == 30 and result.metrics["ledger/unspent"] == 15


def test_dropped_rationales_are_charged_but_not_trained_on(tmp_path):
    task = ltgen()
    kept = {}
    for drop in (False, True):
        policy = Policy("random_cot", budget=45, stages=3, quotas="none", rank="random", tail_fill="none",
                        drop_wrong=drop)
        annotator = stored_teacher(task, tmp_path / "t", wrong_every=3)
        result = distill_under_budget(BudgetedDistillation(tiny_run(task), policy, annotator), tmp_path / str(drop))
        kept[drop] = (result.metrics, [i for s in selections(tmp_path / str(drop)) for i in s.items])
    (plain, items), (dropping, dropped_items) = kept[False], kept[True]
    wrong = [i for i in dropped_items if i.teacher_answer != i.answer]
    assert wrong and all(i.dropped for i in wrong) and not any(i.dropped for i in dropped_items if i not in wrong)
    assert dropping["ledger/charged"] == plain["ledger/charged"] == 45
    assert dropping["ledger/dropped"] == len(wrong) and dropping["ledger/trained"] == 45 - len(wrong)
    assert plain["ledger/dropped"] == 0 and not any(i.dropped for i in items)
    # Kept wrong rationales are trained on as the teacher wrote them, its wrong answer included.
    assert any(i.target.endswith(f"The answer is {i.teacher_answer}.") and i.teacher_answer != i.answer for i in items)


def test_ifd_ranking_buys_distinct_texts_and_a_resumed_stage_uses_the_saved_scores(tmp_path):
    task = ltgen()  # the pool repeats texts (its digit rules have few inputs)
    policy = Policy("active", budget=60, stages=3, quotas="none", rank="ifd", tail_fill="none")
    job = BudgetedDistillation(tiny_run(task), policy, stored_teacher(task, tmp_path / "t"))
    distill_under_budget(job, tmp_path / "run")
    stages = selections(tmp_path / "run")
    for stage in stages[1:]:
        texts = [i.text for i in stage.items]
        assert len(set(texts)) == len(texts) == 20  # copies of a text share a score: never two in a stage
        assert all(i.ifd is not None for i in stage.items)
    # A stage selected again (killed before its selection was saved) ranks by the saved scores.
    scores = read_json(tmp_path / "run" / "stages" / "1" / "ifd.json")
    (tmp_path / "run" / "stages" / "1" / "ifd.json").write_text(json.dumps({k: -v for k, v in scores.items()}))
    for leftover in ("stages/1/selection.json", "stages/2", "metrics.json"):
        path = tmp_path / "run" / leftover
        path.unlink() if path.is_file() else shutil.rmtree(path)
    distill_under_budget(job, tmp_path / "run")
    again = selections(tmp_path / "run")[1]
    chosen = {i.id for i in again.items}
    assert chosen != {i.id for i in stages[1].items}
    assert all(i.ifd == -scores[i.id] for i in again.items)


def test_duplicates_repeat_only_kept_examples_and_a_folder_of_other_settings_is_refused(tmp_path):
    task = ltgen()
    policy = Policy("duplicate", budget=60, stages=3, quotas="naive", rank="random", tail_fill="duplicate",
                    drop_wrong=True)
    job = BudgetedDistillation(tiny_run(task), policy, stored_teacher(task, tmp_path / "t", wrong_every=2))
    distill_under_budget(job, tmp_path / "run")
    items = [i for s in selections(tmp_path / "run") for i in s.items]
    kept = {i.id for i in items if not i.dropped and i.origin != "duplicate"}
    duplicates = [i for i in items if i.origin == "duplicate"]
    assert duplicates and all(not i.dropped and i.id.split("#dup")[0] in kept for i in duplicates)
    assert any(i.dropped for i in items)  # half the teacher's answers are wrong
    for row in read_json(tmp_path / "run" / "ledger.json")["rows"]:
        assert row["dropped"] <= row["charged"]
    with pytest.raises(ValueError, match="other settings \\(budget: 60 there, 90 now\\)"):
        distill_under_budget(replace(job, policy=replace(policy, budget=90)), tmp_path / "run")


def test_a_pool_text_outside_the_stored_teacher_is_an_error_naming_the_store(tmp_path):
    task = ltgen()
    annotator = stored_teacher(task, tmp_path / "t", leave_out=5)
    policy = Policy("random_cot", budget=60, stages=1, quotas="none", rank="random", tail_fill="none")
    with pytest.raises(KeyError, match="no stored teacher output for the text .*rationales.jsonl"):
        distill_under_budget(BudgetedDistillation(tiny_run(task), policy, annotator), tmp_path / "run")


def test_a_lora_student_trains_its_adapters_in_every_stage_and_is_saved_merged(tmp_path):
    task = ltgen()
    run = tiny_run(task, steps=3)
    run = replace(run, student=replace(run.student, lora={"r": 4, "alpha": 8}))
    policy = Policy("baldistill_n", budget=30, stages=2, quotas="naive", rank="ifd", tail_fill="synthesize")
    result = distill_under_budget(BudgetedDistillation(run, policy, stored_teacher(task, tmp_path / "t")),
                                  tmp_path / "run")
    assert result.metrics["ledger/charged"] == 30 and result.metrics["steps"] == 3
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["model_type"] == "llama" and not (tmp_path / "run" / "model" / "adapter_config.json").exists()
    assert (tmp_path / "run" / "stages" / "0" / "train" / "model" / "config.json").exists()  # stage 0's, for IFD


def test_zero_shot_scores_the_base_student_and_spends_nothing(tmp_path):
    task = ltgen()
    policy = Policy("zero_shot", budget=0, quotas="none", rank="random", tail_fill="none", targets="none")
    result = distill_under_budget(BudgetedDistillation(tiny_run(task), policy), tmp_path / "run")
    assert result.metrics["budget"] == 0 and result.metrics["steps"] == 0 and result.metrics["label"] == "zero_shot"
    assert result.metrics["eval/acc_macro"] == 0.0 and len(read_json(tmp_path / "run" / "metrics.json")) > 5
    assert not (tmp_path / "run" / "stages").exists() and (tmp_path / "run" / "predictions.jsonl").exists()


def test_policy_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="tail_fill=synthesize fills per-domain quotas"):
        Policy("x", quotas="none", tail_fill="synthesize")
    with pytest.raises(ValueError, match="targets=gold trains on gold answers without a teacher"):
        Policy("x", quotas="naive", tail_fill="synthesize", targets="gold")
    with pytest.raises(ValueError, match="policy.rank must be one of"):
        Policy("x", rank="loss")


# --- the command line, a local teacher, and a kill inside a stage ---------------------------------

def kdlight_train(folder: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "kdlight.cli.train", *overrides, "threads=1", f"hydra.run.dir={folder}"]


@pytest.fixture(scope="module")
def ltgen_teacher(tmp_path_factory) -> Path:
    """A local teacher fine-tuned by kdlight on the generated data's three teacher formats (a few
    steps: it writes poor rationales and inputs, which is all the pipeline's bookkeeping needs)."""
    folder = tmp_path_factory.mktemp("ltgen_teacher")
    done = subprocess.run(kdlight_train(folder, "stage=teacher", "data=ltgen", "data.task.role=teacher",
                                        "model@teacher=llama-s", "trainer.max_steps=30",
                                        f"paths.teachers_dir={folder}/published"),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "model"


RESUMED = ["data=ltgen", "policy=baldistill_a", "policy.budget=300", "trainer.max_steps=40",
           "checkpoint_every_n_steps=5", "data.task.source.test_per_domain=5"]


def test_a_run_killed_inside_a_stage_resumes_there_with_the_same_selections_charges_and_scores(ltgen_teacher,
                                                                                               tmp_path):
    settings = [*RESUMED, "model@teacher=llama-s", f"teacher.path={ltgen_teacher}"]
    whole = subprocess.run(kdlight_train(tmp_path / "whole", *settings), capture_output=True, text=True, cwd=REPO,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    job = subprocess.Popen(kdlight_train(killed, *settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           cwd=REPO)
    inside = killed / "stages" / "1" / "train" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while job.poll() is None and not inside.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert inside.exists() and not (killed / "stages" / "1" / "train" / "metrics.json").exists(), \
        "the run was not killed inside stage 1's training"
    assert not (killed / "stages" / "2").exists()
    stage0 = (killed / "stages" / "0" / "train" / "metrics.json").stat().st_mtime_ns

    again = subprocess.run(kdlight_train(killed, *settings), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "stage 0: selection read back" in log and "stage 1: selection read back" in log
    assert (killed / "stages" / "0" / "train" / "metrics.json").stat().st_mtime_ns == stage0  # not trained again
    for stage in range(3):
        assert (read_json(killed / "stages" / str(stage) / "selection.json")
                == read_json(tmp_path / "whole" / "stages" / str(stage) / "selection.json"))
    assert read_json(killed / "ledger.json") == read_json(tmp_path / "whole" / "ledger.json")
    resumed, reference = read_json(killed / "metrics.json"), read_json(tmp_path / "whole" / "metrics.json")
    scores = {k for k in reference if k.startswith(("eval/", "ledger/", "val/"))}
    assert scores and {k: resumed[k] for k in scores} == {k: reference[k] for k in scores}
    assert reference["ledger/synthesized"] > 0 and reference["ledger/charged"] == 300  # the teacher synthesised
    assert reference["annotator"] == "local teacher llama-s"


def test_the_command_line_refuses_a_policy_without_a_teacher_or_on_a_task_without_domains(tmp_path):
    done = subprocess.run(kdlight_train(tmp_path / "a", "data=ltgen", "policy=baldistill_a"), capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0 and "needs a teacher that writes rationales" in done.stderr
    done = subprocess.run(kdlight_train(tmp_path / "b", "data=sqlgen", "policy=random_gold"), capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0 and "selects examples by domain from a long-tail task" in done.stderr
