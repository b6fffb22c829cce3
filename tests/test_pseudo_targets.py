"""Pseudo-target training and Joint-Teaching (Calderon et al., ACL 2023): the epoch-to-PT schedule,
the share of student-PT steps, the PT store (reused, regenerated, resumed), noisy KD, and a few
training steps of each method with causal and seq2seq students."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial

import pytest
import torch

from kdlight.data.module import DataSpec, TaskDataModule
from kdlight.losses import ForwardKL, forward_kl
from kdlight.methods import GoldSequences, Method, StepContext
from kdlight.methods.base import PrepareContext
from kdlight.methods.on_policy import StudentSamples
from kdlight.methods.teacher_outputs import PseudoTargets
from kdlight.models import Decoding, generate, target_logits
from kdlight.tasks.jsonl import JsonlTask
from kdlight.training import teacher as teacher_module
from kdlight.training.module import DistillationModule, LoopOptions
from kdlight.training.objective import micro_batch_loss
from kdlight.training.teacher import LiveTeacher
from tests.helpers import cpu_trainer, tiny_model

N_LABELED, N_UNLABELED, K = 6, 4, 3
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "away", "from", "home"]


@pytest.fixture
def jsonl_files(tmp_path):
    """Labeled and unlabeled lines (target null) and a dev set; prompts longer than any PT."""
    def line(i: int, labeled: bool) -> dict:
        prompt = "rewrite: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(12))
        return {"prompt": prompt, "target": " ".join(WORDS[i % 5: i % 5 + 3]) if labeled else None, "id": f"x{i}"}

    train = [line(i, i < N_LABELED) for i in range(N_LABELED + N_UNLABELED)]
    dev = [line(100 + i, True) for i in range(4)]
    for name, rows in (("train", train), ("dev", dev)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def datamodule(files, tokenizer, batch_size=4, gold_pairs_and_inputs=True):
    task = JsonlTask(str(files / "train.jsonl"), str(files / "dev.jsonl"), id_field="id")
    dm = TaskDataModule(DataSpec(task, batch_size=batch_size, eval_batch_size=8, max_prompt_tokens=64), "toy",
                        use_unlabeled=True, gold_pairs_and_inputs=gold_pairs_and_inputs)
    dm.connect(tokenizer)
    dm.setup()
    return dm


def sampling(k: int = K, n: int = 6) -> Decoding:
    return Decoding("sample", top_p=0.95, num_return_sequences=k, max_new_tokens=n)


def prepared(source, dm, teacher, tokenizer):
    source.prepare(PrepareContext(dm.train_prompts(), teacher, tokenizer, len(tokenizer)))
    return source


def full_batch(dm):
    """Every training item in one batch, in item order."""
    return dm._collate()(dm._train)


def context(student, teacher, tokenizer, step=0, epoch=0):
    return StepContext(student, teacher, tokenizer, len(tokenizer), torch.Generator().manual_seed(0), step, epoch)


def test_items_are_gold_pairs_then_every_input(jsonl_files, tokenizer):
    dm = datamodule(jsonl_files, tokenizer)
    items = dm.training_items()
    assert len(items) == 2 * N_LABELED + N_UNLABELED
    assert [e.labeled for e in items] == [True] * N_LABELED + [False] * (N_LABELED + N_UNLABELED)
    assert [e.prompt for e in items[N_LABELED:2 * N_LABELED]] == [e.prompt for e in items[:N_LABELED]]
    plain = datamodule(jsonl_files, tokenizer, gold_pairs_and_inputs=False)  # seqkd, gkd: each item once
    assert len(plain.training_items()) == N_LABELED + N_UNLABELED


def test_an_input_with_several_references_is_one_pt_input(tokenizer, tmp_path):
    rows = [{"prompt": "describe: x", "target": t} for t in ("a", "b", "c")] + [{"prompt": "describe: y", "target": "d"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    items = datamodule(tmp_path, tokenizer).training_items()
    assert [(e.prompt, e.target) for e in items[4:]] == [("describe: x", None), ("describe: y", None)]


def test_each_input_gets_the_epochs_pt_and_gold_pairs_stay(jsonl_files, tokenizer, tmp_path):
    dm = datamodule(jsonl_files, tokenizer)
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    source = prepared(PseudoTargets(str(tmp_path / "cache"), sampling()), dm, teacher, tokenizer)
    batch = full_batch(dm)
    gold = batch.targets()
    per_epoch = [source.sequences(batch, context(None, teacher, tokenizer, epoch=e)).targets() for e in range(K + 1)]
    for epoch, targets in enumerate(per_epoch):
        assert targets[:N_LABELED] == gold[:N_LABELED]  # gold pairs in every epoch, as they are
        for row in range(N_LABELED, len(targets)):
            assert targets[row] == source.outputs[row][epoch % K].ids
    assert per_epoch[K] == per_epoch[0]  # the schedule cycles after K epochs
    inputs = slice(N_LABELED, None)
    assert per_epoch[0][inputs] != per_epoch[1][inputs] != per_epoch[2][inputs]  # sampled PTs differ
    assert source.outputs[0] == source.outputs[N_LABELED]  # a gold pair and its input copy share one prompt


def test_the_loader_serves_every_gold_pair_in_every_epoch(jsonl_files, tokenizer):
    dm = datamodule(jsonl_files, tokenizer, batch_size=3)
    gold = {i: t for (_, t, i) in dm._train if t is not None}
    for _epoch in range(2):
        seen = {}
        for batch in dm.train_dataloader():
            for index, labeled, target in zip(batch.index.tolist(), batch.labeled.tolist(), batch.targets()):
                seen[index] = target if labeled else None
        assert {i: t for i, t in seen.items() if t is not None} == gold
        assert len(seen) == 2 * N_LABELED + N_UNLABELED


def test_unlabeled_inputs_never_contribute_ce(jsonl_files, tokenizer, tmp_path):
    dm = datamodule(jsonl_files, tokenizer)
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    source = prepared(PseudoTargets(str(tmp_path / "cache"), sampling()), dm, teacher, tokenizer)
    student = tiny_model(tokenizer, seed=0)
    batch = full_batch(dm)
    sequences = source.sequences(batch, context(student, teacher, tokenizer))
    method = Method("pt+gold ce", source, ForwardKL(), ce_weight=1.0, ce_on="gold")
    terms = micro_batch_loss(method, student, teacher, batch, sequences, len(tokenizer)).terms
    labeled = batch.take(torch.arange(N_LABELED))
    mask = labeled.target_mask.bool()
    expected = torch.nn.functional.cross_entropy(target_logits(student, labeled, len(tokenizer))[mask.bool()],
                                                 labeled.target_ids[mask], reduction="sum")
    assert terms["ce"].over == "gold" and torch.allclose(terms["ce"].total, expected)
    assert int(batch.target_mask[N_LABELED:].sum()) == 0  # input rows carry no gold tokens at all


@pytest.mark.parametrize("lam,steps,expected", [(0.5, 10, [1, 3, 5, 7, 9]), (1.0, 4, [0, 1, 2, 3]), (0.0, 5, []),
                                                 (0.25, 8, [3, 7])])
def test_joint_teaching_uses_student_pts_on_exactly_its_share_of_steps(jsonl_files, tokenizer, tmp_path, lam, steps,
                                                                       expected):
    dm = datamodule(jsonl_files, tokenizer)
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    pts = PseudoTargets(str(tmp_path / "cache"), sampling(n=5))
    source = StudentSamples(lam, "step", Decoding("sample", top_p=0.95, max_new_tokens=5), otherwise=pts)
    prepared(source, dm, teacher, tokenizer)
    student = tiny_model(tokenizer, seed=0)
    batch = full_batch(dm)
    used = []
    for step in range(steps):
        ctx = context(student, teacher, tokenizer, step=step, epoch=0)
        sequences = source.sequences(batch, ctx)
        if "generation_s" in ctx.timings:  # the student decoded this step
            used.append(step)
            assert sequences.targets() != batch.targets()
        else:
            assert sequences.targets() == pts.sequences(batch, ctx).targets()
    assert used == expected
    assert (pts.outputs is None) == (lam == 1.0)  # student PTs only: the teacher's are never generated


@pytest.mark.parametrize("lam,steps", [(0.29, 100), (0.35, 200), (0.7, 10), (1 / 3, 99)])
def test_the_share_of_student_pt_steps_is_exact_for_any_share(lam, steps):
    source = StudentSamples(lam, "step", Decoding("sample", max_new_tokens=4))
    assert sum(source.samples_at(t) for t in range(steps)) == round(lam * steps)


def test_joint_teaching_targets_are_student_samples_without_the_prompt_and_get_the_same_kl(jsonl_files, tokenizer,
                                                                                           tmp_path):
    dm = datamodule(jsonl_files, tokenizer)
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    source = StudentSamples(1.0, "step", Decoding("sample", top_p=0.95, max_new_tokens=5),
                            otherwise=PseudoTargets(str(tmp_path / "cache"), sampling(n=5)))
    prepared(source, dm, teacher, tokenizer)
    student = tiny_model(tokenizer, seed=0)
    batch = full_batch(dm)
    torch.manual_seed(3)
    sequences = source.sequences(batch, context(student, teacher, tokenizer))
    torch.manual_seed(3)
    expected = generate(student.eval(), batch, source.decoding, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        len(tokenizer))
    student.train()
    assert sequences.targets() == expected  # the student's own samples, for every row
    prompt_lengths = batch.prompt_mask.sum(1)
    assert all(len(t) <= 5 < int(n) for t, n in zip(sequences.targets(), prompt_lengths))  # no prompt in them
    assert torch.equal(sequences.prompt_ids, batch.prompt_ids)
    method = Method("joint_teaching", source, ForwardKL(), ce_weight=0.0)
    terms = micro_batch_loss(method, student, teacher, batch, sequences, len(tokenizer)).terms
    assert set(terms) == {"kd_fkl"}
    mask = sequences.target_mask.bool()
    kl = forward_kl(target_logits(student, sequences, len(tokenizer))[mask.bool()],
                    teacher.distributions(sequences, len(tokenizer))[mask.bool()]).sum()
    assert torch.allclose(terms["kd_fkl"].total, kl)


def test_pts_are_decoded_once_per_distinct_input_and_reused(jsonl_files, tokenizer, tmp_path, generate_calls):
    dm = datamodule(jsonl_files, tokenizer)
    cache = tmp_path / "cache"
    first = prepared(PseudoTargets(str(cache), sampling(), batch_size=4), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                     tokenizer)
    assert sum(generate_calls) == N_LABELED + N_UNLABELED  # a labeled input is decoded once, not twice
    assert all(len(outputs) == K for outputs in first.outputs.values())
    generate_calls.clear()
    again = prepared(PseudoTargets(str(cache), sampling(), batch_size=4), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                     tokenizer)
    assert generate_calls == [] and again.outputs == first.outputs
    hotter = Decoding("sample", top_p=0.95, temperature=1.5, num_return_sequences=K, max_new_tokens=6)
    prepared(PseudoTargets(str(cache), hotter, batch_size=4), dm, LiveTeacher(tiny_model(tokenizer, seed=1)), tokenizer)
    assert sum(generate_calls) == N_LABELED + N_UNLABELED  # another decoding: generated anew


class Interrupted(Exception):
    pass


def test_an_interrupted_generation_resumes_without_duplicates_or_gaps(jsonl_files, tokenizer, tmp_path, monkeypatch):
    dm = datamodule(jsonl_files, tokenizer)
    reference = prepared(PseudoTargets(str(tmp_path / "whole"), sampling(), batch_size=3), dm,
                         LiveTeacher(tiny_model(tokenizer, seed=1)), tokenizer).outputs
    calls = interrupt_after(2, monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        prepared(PseudoTargets(str(cache), sampling(), batch_size=3), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                 tokenizer)
    journal = next((cache / "teacher_outputs").glob("*.partial"))
    assert len(journal.read_text().splitlines()) == 1 + 2  # its key, then the two finished chunks
    calls.clear()
    resumed = prepared(PseudoTargets(str(cache), sampling(), batch_size=3), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                       tokenizer)
    distinct = N_LABELED + N_UNLABELED
    assert sum(calls) == distinct - 2 * 3  # only the chunks that were not finished
    assert resumed.outputs == reference  # the same PTs as an uninterrupted run: no gap, no duplicate
    store = (cache / "teacher_outputs").glob("*.jsonl")
    lines = next(store).read_text().splitlines()[1:]
    assert len(lines) == distinct and len({json.loads(line)["prompt"] for line in lines}) == distinct
    assert not list((cache / "teacher_outputs").glob("*.partial"))  # the journal is gone once the store is written


def interrupt_after(chunks: int, monkeypatch) -> list[int]:
    """Make the teacher's `generate` raise `Interrupted` at its (chunks + 1)-th call (a kill between
    chunks); returns the batch sizes of its calls."""
    calls = []

    def dies(*args, **kwargs):
        calls.append(args[1].size)
        if len(calls) == chunks + 1:
            raise Interrupted
        return generate(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "generate", dies)
    return calls


def test_a_journal_cut_mid_line_regenerates_only_that_chunk(jsonl_files, tokenizer, tmp_path, monkeypatch):
    dm = datamodule(jsonl_files, tokenizer)
    whole = prepared(PseudoTargets(str(tmp_path / "whole"), sampling(), batch_size=3), dm,
                     LiveTeacher(tiny_model(tokenizer, seed=1)), tokenizer).outputs
    calls = interrupt_after(3, monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        prepared(PseudoTargets(str(cache), sampling(), batch_size=3), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                 tokenizer)
    journal = next((cache / "teacher_outputs").glob("*.partial"))
    text = journal.read_text()
    journal.write_text(text[: text.rstrip("\n").rfind("\n") + 40])  # the third chunk's line cut short by a kill
    calls.clear()
    resumed = prepared(PseudoTargets(str(cache), sampling(), batch_size=3), dm,
                       LiveTeacher(tiny_model(tokenizer, seed=1)), tokenizer)
    assert sum(calls) == N_LABELED + N_UNLABELED - 2 * 3 and resumed.outputs == whole


def test_a_generation_resumes_on_another_number_of_ranks(jsonl_files, tokenizer, tmp_path, generate_calls):
    """What rank 1 of 2 journaled is not decoded again by a run on one process."""
    dm = datamodule(jsonl_files, tokenizer)
    whole = prepared(PseudoTargets(str(tmp_path / "whole"), sampling(), batch_size=3), dm,
                     LiveTeacher(tiny_model(tokenizer, seed=1)), tokenizer).outputs
    cache, teacher = tmp_path / "cache", LiveTeacher(tiny_model(tokenizer, seed=1))
    rank1 = PrepareContext(dm.train_prompts(), teacher, tokenizer, len(tokenizer), rank=1, world_size=2)
    generate_calls.clear()
    with pytest.raises(RuntimeError, match="have no output after every rank's were gathered"):
        teacher.outputs(rank1, sampling(), batch_size=3, cache_dir=str(cache))  # alone: rank 0's part is missing
    assert generate_calls == [3, 1]  # chunks 1 and 3 of 0-3 (10 distinct inputs)
    generate_calls.clear()
    resumed = prepared(PseudoTargets(str(cache), sampling(), batch_size=3), dm, teacher, tokenizer)
    assert generate_calls == [3, 3] and resumed.outputs == whole  # chunks 0 and 2 only, the same PTs
    assert not list((cache / "teacher_outputs").glob("*.partial"))  # every rank's journal removed


def test_a_journal_of_another_chunk_size_is_not_reused(jsonl_files, tokenizer, tmp_path, monkeypatch):
    dm = datamodule(jsonl_files, tokenizer)
    beam = Decoding("beam", num_beams=2, num_return_sequences=2, max_new_tokens=6)  # batch size not in its cache key
    interrupt_after(2, monkeypatch)
    with pytest.raises(Interrupted):
        prepared(PseudoTargets(str(tmp_path), beam, batch_size=2), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                 tokenizer)
    calls = interrupt_after(100, monkeypatch)
    resumed = prepared(PseudoTargets(str(tmp_path), beam, batch_size=4), dm, LiveTeacher(tiny_model(tokenizer, seed=1)),
                       tokenizer)
    assert calls == [4, 4, 2]  # every chunk of the new size decoded, none taken from the other journal
    assert sorted(resumed.outputs) == list(range(len(dm.training_items())))
    assert all(len(outputs) == 2 for outputs in resumed.outputs.values())


def test_noisy_kd_needs_a_teacher_with_dropout_and_then_its_distributions_vary(tokenizer, jsonl_files):
    with pytest.raises(ValueError, match="attention_dropout"):
        LiveTeacher(tiny_model(tokenizer, seed=1), dropout=True)
    noisy = LiveTeacher(tiny_model(tokenizer, seed=1, attention_dropout=0.3), dropout=True)
    batch = full_batch(datamodule(jsonl_files, tokenizer)).slice(0, N_LABELED)
    first, second = (noisy.distributions(batch, len(tokenizer)) for _ in range(2))
    assert not torch.allclose(first, second)  # a different noisy teacher each forward
    clean = [noisy.distributions(batch, len(tokenizer), noisy=False) for _ in range(2)]
    assert torch.equal(clean[0], clean[1])  # held-out metrics see the teacher without dropout


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("name", ["pt", "joint_teaching", "noisy_kd"])
def test_students_train_a_few_steps(jsonl_files, tokenizer, tmp_path, family, name):
    dm = datamodule(jsonl_files, tokenizer, gold_pairs_and_inputs=name != "noisy_kd")
    pts = PseudoTargets(str(tmp_path / "cache"), sampling(), batch_size=8)
    source = {"pt": pts, "noisy_kd": GoldSequences(),
              "joint_teaching": StudentSamples(0.5, "step", Decoding("sample", top_p=0.95, max_new_tokens=6), pts)}
    method = Method(name, source[name], ForwardKL(), ce_weight=0.0, teacher_dropout=name == "noisy_kd")
    dropout = {"attention_dropout": 0.2} if family == "llama" else {"dropout_rate": 0.2}
    teacher = tiny_model(tokenizer, family, seed=1, **dropout)
    student = tiny_model(tokenizer, family, seed=0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    module = DistillationModule(student, method, tokenizer, len(tokenizer), partial(torch.optim.AdamW, lr=1e-2),
                                LoopOptions(warmup_steps=1), teacher)
    trainer = cpu_trainer(tmp_path / "run", 4, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 4
    assert module.teacher.dropout == (name == "noisy_kd")
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the student learnt
    assert all(torch.isfinite(v).all() for v in student.state_dict().values())


@dataclass
class EpochsSeen(PseudoTargets):
    """The real source, noting the epoch the loop gives it at each step."""

    seen: list[int] = field(default_factory=list)

    def sequences(self, gold, ctx):
        self.seen.append(ctx.epoch)
        return super().sequences(gold, ctx)


def test_the_loop_gives_the_source_each_steps_epoch(jsonl_files, tokenizer, tmp_path):
    dm = datamodule(jsonl_files, tokenizer)  # 16 items, batches of 4: 4 steps per epoch
    source = EpochsSeen(str(tmp_path / "cache"), sampling())
    module = DistillationModule(tiny_model(tokenizer, seed=0), Method("pt", source, ForwardKL(), ce_weight=0.0),
                                tokenizer, len(tokenizer), partial(torch.optim.AdamW, lr=1e-3),
                                LoopOptions(warmup_steps=1), tiny_model(tokenizer, seed=1))
    cpu_trainer(tmp_path / "run", 10, limit_val_batches=0).fit(module, datamodule=dm)
    assert source.seen == [0] * 4 + [1] * 4 + [2] * 2
