"""Teacher outputs as targets (SeqKD, f-distill): generated once, cached by key, reused; the mixture."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from kdlight.data.batch import collate
from kdlight.data.spider import PromptParts, SpiderSource
from kdlight.data.text2sql import Text2SQLDataModule
from kdlight.losses import ForwardKL, TotalVariation, token_cross_entropy
from kdlight.methods import Method, StepContext, teacher_outputs
from kdlight.methods.on_policy import StudentSamples
from kdlight.methods.teacher_outputs import Prompts, TeacherOutputs, teacher_fingerprint
from kdlight.models.build import save_model
from kdlight.models.lm import generate, target_logits
from kdlight.training.module import DistillationModule, LoopOptions
from tests.helpers import cpu_trainer, loader, tiny_model, toy_batches

N_TRAIN = 12


@pytest.fixture
def datamodule(sqlgen_root, tokenizer):
    dm = Text2SQLDataModule(SpiderSource(str(sqlgen_root)), PromptParts(sample_values=False), batch_size=4,
                            eval_batch_size=8, max_prompt_tokens=64, limit_train=N_TRAIN, limit_eval=4)
    dm.connect(tokenizer)
    dm.setup()
    return dm


@pytest.fixture
def generate_calls(monkeypatch):
    """Count the teacher-output source's calls to the real `generate` (it still runs)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].size)
        return generate(*args, **kwargs)

    monkeypatch.setattr(teacher_outputs, "generate", counted)
    return calls


def fit(tokenizer, datamodule, method, teacher, tmp_path, steps=2):
    student = tiny_model(tokenizer, seed=0)
    module = DistillationModule(student, method, tokenizer, len(tokenizer), partial(torch.optim.SGD, lr=0.1),
                                LoopOptions(warmup_steps=1), teacher)
    cpu_trainer(tmp_path / "run", steps).fit(module, datamodule=datamodule)
    return module


def seqkd(cache, **decoding):
    source = TeacherOutputs(str(cache), max_new_tokens=decoding.pop("max_new_tokens", 8), batch_size=5, **decoding)
    return Method("seqkd", source, None, ce_weight=1.0, kd_weight=0.0, ce_on="sequences")


def test_second_run_reads_the_cache_and_a_changed_decoding_setting_regenerates(tokenizer, datamodule, tmp_path,
                                                                               generate_calls):
    teacher, cache = tiny_model(tokenizer, seed=1), tmp_path / "cache"
    first = fit(tokenizer, datamodule, seqkd(cache), teacher, tmp_path / "a")
    assert sum(generate_calls) == N_TRAIN and first.method.source.generated == N_TRAIN
    files = list((cache / "teacher_outputs").glob("*.json"))
    assert len(files) == 1 and not list((cache / "teacher_outputs").glob(".*tmp"))
    # What is cached is the teacher's own greedy decoding of every training prompt.
    prompts = datamodule.train_prompts()
    outputs = first.method.source.outputs
    assert sorted(outputs) == list(range(N_TRAIN))
    batch = collate([p for _, p in prompts], [[tokenizer.eos_token_id]] * N_TRAIN, list(range(N_TRAIN)),
                    tokenizer.pad_token_id)
    expected = generate(teacher.eval(), batch, 8, tokenizer.eos_token_id, len(tokenizer))
    assert [outputs[i] or [tokenizer.eos_token_id] for i in range(N_TRAIN)] == \
        [e or [tokenizer.eos_token_id] for e in expected]

    generate_calls.clear()
    second = fit(tokenizer, datamodule, seqkd(cache), teacher, tmp_path / "b")
    assert generate_calls == [] and second.method.source.generated == 0
    assert second.method.source.outputs == outputs

    third = fit(tokenizer, datamodule, seqkd(cache, max_new_tokens=5), teacher, tmp_path / "c")
    assert sum(generate_calls) == N_TRAIN and third.method.source.generated == N_TRAIN
    assert len(list((cache / "teacher_outputs").glob("*.json"))) == 2
    assert all(len(o) <= 5 for o in third.method.source.outputs.values())


def test_key_covers_teacher_data_and_decoding(tokenizer, datamodule, tmp_path):
    teacher = tiny_model(tokenizer, seed=1)
    prompts = Prompts(datamodule.train_prompts(), teacher, tokenizer, len(tokenizer))
    key = TeacherOutputs(str(tmp_path)).cache_key(prompts)
    assert TeacherOutputs(str(tmp_path), batch_size=3).cache_key(prompts) == key  # batching is not decoding
    assert TeacherOutputs(str(tmp_path), num_beams=4).cache_key(prompts) != key
    assert TeacherOutputs(str(tmp_path), do_sample=True).cache_key(prompts) != key
    other_teacher = Prompts(prompts.items, tiny_model(tokenizer, seed=2), tokenizer, len(tokenizer))
    assert TeacherOutputs(str(tmp_path)).cache_key(other_teacher) != key
    fewer = Prompts(prompts.items[:-1], teacher, tokenizer, len(tokenizer))
    assert TeacherOutputs(str(tmp_path)).cache_key(fewer) != key


def test_a_saved_teacher_is_keyed_by_its_checkpoint_files(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    save_model(tiny_model(tokenizer, seed=1), tokenizer, tmp_path / "teacher")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    before = teacher_fingerprint(loaded)
    assert before.startswith(str((tmp_path / "teacher").resolve()))
    assert teacher_fingerprint(AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")) == before
    save_model(tiny_model(tokenizer, seed=3), tokenizer, tmp_path / "teacher")  # a new checkpoint, same folder
    assert teacher_fingerprint(AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")) != before


def test_an_unreadable_cache_is_regenerated_not_fatal(tokenizer, datamodule, tmp_path, generate_calls, caplog):
    teacher = tiny_model(tokenizer, seed=1)
    prompts = Prompts(datamodule.train_prompts(), teacher, tokenizer, len(tokenizer))
    source = TeacherOutputs(str(tmp_path), max_new_tokens=4)
    source.prepare(prompts)
    path = next((tmp_path / "teacher_outputs").glob("*.json"))
    path.write_text(path.read_text()[:50])  # a truncated file (e.g. written by a foreign tool)
    generate_calls.clear()
    again = TeacherOutputs(str(tmp_path), max_new_tokens=4)
    again.prepare(prompts)
    assert sum(generate_calls) == N_TRAIN and again.outputs == source.outputs
    assert "ignoring unreadable cache" in caplog.text and json.loads(path.read_text())["key"]


def test_seqkd_ce_is_on_the_teacher_outputs(tokenizer, datamodule, tmp_path):
    teacher = tiny_model(tokenizer, seed=1)
    source = TeacherOutputs(str(tmp_path), max_new_tokens=6)
    source.prepare(Prompts(datamodule.train_prompts(), teacher, tokenizer, len(tokenizer)))
    method = Method("seqkd", source, None, ce_weight=1.0, kd_weight=0.0, ce_on="sequences")
    module = DistillationModule(tiny_model(tokenizer, seed=0), method, tokenizer, len(tokenizer),
                                partial(torch.optim.SGD, lr=0.1), LoopOptions(), teacher)
    gold = next(iter(datamodule.train_dataloader()))
    ctx = StepContext(module.student, teacher, tokenizer, len(tokenizer), torch.Generator(), 0)
    seq = source.sequences(gold, ctx)
    assert seq.targets() == [source.outputs[i] for i in gold.index.tolist()] != gold.targets()
    assert torch.equal(seq.prompt_ids, gold.prompt_ids)
    total, _ = module._loss_terms(gold, seq, same=False)["ce"]
    logits = target_logits(module.student, seq, len(tokenizer))
    mask = seq.target_mask.bool()
    assert torch.allclose(total, token_cross_entropy(logits[mask], seq.target_ids[mask]).sum())
    with_fkl = Method("seqkd_fkl", source, ForwardKL(), ce_weight=0.0, ce_on="sequences")
    assert list(DistillationModule(module.student, with_fkl, tokenizer, len(tokenizer), None, LoopOptions(),
                                   teacher)._loss_terms(gold, seq, same=False)) == ["kd_fkl"]


def test_fdistill_mixes_teacher_outputs_and_student_samples(tokenizer, datamodule, tmp_path):
    teacher, student = tiny_model(tokenizer, seed=1), tiny_model(tokenizer, seed=0)
    outputs = TeacherOutputs(str(tmp_path), max_new_tokens=6)
    mixture = StudentSamples(lam=0.5, per="example", max_new_tokens=6, otherwise=outputs)
    assert mixture.needs_teacher and Method("fdistill", mixture, TotalVariation(), ce_weight=0.0).needs_teacher
    mixture.prepare(Prompts(datamodule.train_prompts(), teacher, tokenizer, len(tokenizer)))  # via `otherwise`
    gold = next(iter(datamodule.train_dataloader()))
    teacher_targets = outputs.lookup(gold.index.tolist())
    # A seed whose per-example draws mix both kinds in this batch (the source draws the same way).
    seed = next(s for s in range(100) if 0 < int((torch.rand(gold.size, generator=torch.Generator().manual_seed(s))
                                                  < 0.5).sum()) < gold.size)
    sampled = (torch.rand(gold.size, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()
    torch.manual_seed(7)
    out = mixture.sequences(gold, StepContext(student, teacher, tokenizer, len(tokenizer),
                                              torch.Generator().manual_seed(seed), 0))
    torch.manual_seed(7)
    rows = [i for i, s in enumerate(sampled) if s]
    samples = generate(student.eval(), gold.take(torch.tensor(rows)), 6, tokenizer.eos_token_id, len(tokenizer),
                       do_sample=True)
    expected = list(teacher_targets)
    for row, sample in zip(rows, samples):
        expected[row] = sample
    assert out.targets() == expected  # teacher outputs where not drawn, the student's samples where drawn
    assert torch.equal(out.prompt_ids, gold.prompt_ids)


def test_precomputing_without_a_datamodule_is_a_clear_error(tokenizer, tmp_path):
    module = DistillationModule(tiny_model(tokenizer), seqkd(tmp_path), tokenizer, len(tokenizer),
                                partial(torch.optim.SGD, lr=0.1), LoopOptions(), tiny_model(tokenizer, seed=1))
    with pytest.raises(RuntimeError, match="train_prompts"):
        cpu_trainer(tmp_path, 1).fit(module, loader(toy_batches(tokenizer)))
