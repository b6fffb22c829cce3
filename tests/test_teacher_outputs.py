"""Teacher outputs as targets (SeqKD, f-distill): generated once, cached by key, reused; the
mixture; and a teacher known only by a file of its outputs (no model loaded)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from kdlight.data.batch import collate
from kdlight.losses import ForwardKL, TotalVariation, token_cross_entropy
from kdlight.losses.sparse import SparseTargets
from kdlight.methods import Method, StepContext
from kdlight.methods.base import PrepareContext
from kdlight.methods.on_policy import StudentSamples
from kdlight.methods.teacher_outputs import TeacherOutputs
from kdlight.models import Decoding, generate, target_logits
from kdlight.models.build import save_model
from kdlight.targets.store import TargetStore
from kdlight.training.module import DistillationModule, LoopOptions
from kdlight.training.objective import micro_batch_loss
from kdlight.training.teacher import LiveTeacher, StoredTeacher, teacher_fingerprint
from tests.helpers import sqlgen_datamodule, cpu_trainer, tiny_model

N_TRAIN = 12


@pytest.fixture
def datamodule(sqlgen_root, tokenizer):
    return sqlgen_datamodule(sqlgen_root, tokenizer, N_TRAIN)


def greedy(n: int = 8) -> Decoding:
    return Decoding(max_new_tokens=n)


def fit(tokenizer, datamodule, method, teacher, tmp_path, steps=2):
    student = tiny_model(tokenizer, seed=0)
    module = DistillationModule(student, method, tokenizer, len(tokenizer), partial(torch.optim.SGD, lr=0.1),
                                LoopOptions(warmup_steps=1), teacher)
    cpu_trainer(tmp_path / "run", steps).fit(module, datamodule=datamodule)
    return module


def seqkd(cache, decoding=None, top_k=0):
    source = TeacherOutputs(str(cache), decoding or greedy(), top_k_logprobs=top_k, batch_size=5)
    return Method("seqkd", source, None, ce_weight=1.0, kd_weight=0.0, ce_on="sequences")


def prepare_context(datamodule, teacher, tokenizer) -> PrepareContext:
    return PrepareContext(datamodule.train_prompts(), teacher, tokenizer, len(tokenizer))


def test_second_run_reads_the_cache_and_a_changed_decoding_setting_regenerates(tokenizer, datamodule, tmp_path,
                                                                               generate_calls):
    teacher, cache = LiveTeacher(tiny_model(tokenizer, seed=1)), tmp_path / "cache"
    first = fit(tokenizer, datamodule, seqkd(cache), teacher, tmp_path / "a")
    assert sum(generate_calls) == N_TRAIN and teacher.generated == N_TRAIN
    files = list((cache / "teacher_outputs").glob("*.jsonl"))
    assert len(files) == 1 and not list((cache / "teacher_outputs").glob(".*"))  # no temporary file left
    # What is cached is the teacher's own greedy decoding of every training prompt.
    prompts = datamodule.train_prompts()
    outputs = first.method.source.lookup(list(range(N_TRAIN)))
    batch = collate([p.ids for p in prompts], [None] * N_TRAIN, list(range(N_TRAIN)), tokenizer.pad_token_id)
    expected = generate(teacher.model.eval(), batch, greedy(), tokenizer.eos_token_id, tokenizer.pad_token_id,
                        len(tokenizer))
    assert outputs == expected

    generate_calls.clear()
    again = LiveTeacher(tiny_model(tokenizer, seed=1))  # the same weights, a new process's view of them
    second = fit(tokenizer, datamodule, seqkd(cache), again, tmp_path / "b")
    assert generate_calls == [] and again.generated == 0
    assert second.method.source.lookup(list(range(N_TRAIN))) == outputs

    third = fit(tokenizer, datamodule, seqkd(cache, greedy(5)), again, tmp_path / "c")
    assert sum(generate_calls) == N_TRAIN and again.generated == N_TRAIN
    assert len(list((cache / "teacher_outputs").glob("*.jsonl"))) == 2
    assert all(len(o) <= 5 for o in third.method.source.lookup(list(range(N_TRAIN))))


def test_key_covers_teacher_prompts_decoding_and_top_k(tokenizer, datamodule):
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    ctx = prepare_context(datamodule, teacher, tokenizer)
    key = teacher.cache_key(ctx, greedy(), 0, seed=0, batch_size=5)
    # The seed and the batching (one seed per chunk) matter only when sampling.
    assert teacher.cache_key(ctx, greedy(), 0, seed=5, batch_size=7) == key
    assert teacher.cache_key(ctx, Decoding("beam", num_beams=4, max_new_tokens=8), 0, 0, 5) != key
    sampled = teacher.cache_key(ctx, Decoding("sample", max_new_tokens=8), 0, 0, 5)
    assert sampled != key
    assert teacher.cache_key(ctx, Decoding("sample", max_new_tokens=8), 0, 1, 5) != sampled
    assert teacher.cache_key(ctx, Decoding("sample", max_new_tokens=8), 0, 0, 7) != sampled
    assert teacher.cache_key(ctx, greedy(), 16, 0, 5) != key
    other = LiveTeacher(tiny_model(tokenizer, seed=2))
    assert other.cache_key(ctx, greedy(), 0, 0, 5) != key
    fewer = PrepareContext(ctx.prompts[:-1], teacher, tokenizer, len(tokenizer))
    assert teacher.cache_key(fewer, greedy(), 0, 0, 5) != key
    # Sampled outputs name their sampler (kdlight's decoder and HF generate draw differently under
    # one seed); greedy and beam keys do not carry it, so their caches stay valid.
    assert sampled["sampler"] == "inverse_transform" and "sampler" not in key
    teacher.model.to(torch.bfloat16)  # bf16 goes to HF generate
    assert teacher.cache_key(ctx, Decoding("sample", max_new_tokens=8), 0, 0, 5)["sampler"] == "hf_multinomial"


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
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    ctx = prepare_context(datamodule, teacher, tokenizer)
    first = teacher.outputs(ctx, greedy(4), cache_dir=str(tmp_path))
    path = next((tmp_path / "teacher_outputs").glob("*.jsonl"))
    path.write_text(path.read_text()[:50])  # a truncated file (e.g. written by a foreign tool)
    generate_calls.clear()
    again = teacher.outputs(ctx, greedy(4), cache_dir=str(tmp_path))
    assert sum(generate_calls) == N_TRAIN and again == first
    assert "ignoring unreadable cache" in caplog.text
    assert json.loads(path.read_text().splitlines()[0])["key"]  # rewritten whole


def test_seqkd_ce_is_on_the_teacher_outputs(tokenizer, datamodule, tmp_path):
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1))
    method = seqkd(tmp_path, greedy(6))
    method.source.prepare(prepare_context(datamodule, teacher, tokenizer))
    student = tiny_model(tokenizer, seed=0)
    gold = next(iter(datamodule.train_dataloader()))
    seq = method.source.sequences(gold, StepContext(student, teacher, tokenizer, len(tokenizer), torch.Generator()))
    assert seq.targets() == method.source.lookup(gold.index.tolist()) != gold.targets()
    assert torch.equal(seq.prompt_ids, gold.prompt_ids)
    terms = micro_batch_loss(method, student, teacher, gold, seq, len(tokenizer)).terms
    logits = target_logits(student, seq, len(tokenizer))
    mask = seq.target_mask.bool()
    assert set(terms) == {"ce"} and terms["ce"].over == "sequences"
    assert torch.allclose(terms["ce"].total, token_cross_entropy(logits[mask], seq.target_ids[mask]).sum())
    with_fkl = Method("seqkd_fkl", method.source, ForwardKL(), ce_weight=0.0, ce_on="sequences")
    assert list(micro_batch_loss(with_fkl, student, teacher, gold, seq, len(tokenizer)).terms) == ["kd_fkl"]


def test_fdistill_mixes_teacher_outputs_and_student_samples(tokenizer, datamodule, tmp_path):
    teacher, student = LiveTeacher(tiny_model(tokenizer, seed=1)), tiny_model(tokenizer, seed=0)
    outputs = TeacherOutputs(str(tmp_path), greedy(6))
    sample_6 = Decoding("sample", max_new_tokens=6)
    mixture = StudentSamples(lam=0.5, per="example", decoding=sample_6, otherwise=outputs)
    assert mixture.needs_teacher and mixture.needs_preparation
    assert Method("fdistill", mixture, TotalVariation(), ce_weight=0.0).needs_teacher
    mixture.prepare(prepare_context(datamodule, teacher, tokenizer))  # via `otherwise`
    gold = next(iter(datamodule.train_dataloader()))
    teacher_targets = outputs.lookup(gold.index.tolist())
    # A seed whose per-example draws mix both kinds in this batch (the source draws the same way).
    seed = next(s for s in range(100) if 0 < int((torch.rand(gold.size, generator=torch.Generator().manual_seed(s))
                                                  < 0.5).sum()) < gold.size)
    sampled = (torch.rand(gold.size, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()
    torch.manual_seed(7)
    out = mixture.sequences(gold, StepContext(student, teacher, tokenizer, len(tokenizer),
                                              torch.Generator().manual_seed(seed)))
    torch.manual_seed(7)
    rows = [i for i, s in enumerate(sampled) if s]
    samples = generate(student.eval(), gold.take(torch.tensor(rows)), sample_6, tokenizer.eos_token_id,
                       tokenizer.pad_token_id, len(tokenizer))
    expected = list(teacher_targets)
    for row, sample in zip(rows, samples):
        expected[row] = sample
    assert out.targets() == expected  # teacher outputs where not drawn, the student's samples where drawn
    assert torch.equal(out.prompt_ids, gold.prompt_ids)


def test_precomputing_without_a_task_data_module_is_a_clear_error(tokenizer, tmp_path):
    from tests.helpers import loader, toy_batches

    module = DistillationModule(tiny_model(tokenizer), seqkd(tmp_path), tokenizer, len(tokenizer),
                                partial(torch.optim.SGD, lr=0.1), LoopOptions(), tiny_model(tokenizer, seed=1))
    with pytest.raises(RuntimeError, match="precomputes targets for every training prompt: fit with a TaskDataModule"):
        cpu_trainer(tmp_path, 1).fit(module, loader(toy_batches(tokenizer)))


def test_the_cache_with_log_probabilities_drives_a_stored_teacher_with_no_model(tokenizer, datamodule, tmp_path):
    """A live teacher's outputs with their top-k log-probabilities, read back as a stored teacher:
    the same targets, and sparse targets that are the teacher's own top-k at every position."""
    live = LiveTeacher(tiny_model(tokenizer, seed=1))
    ctx = prepare_context(datamodule, live, tokenizer)
    outputs = live.outputs(ctx, greedy(6), top_k=8, cache_dir=str(tmp_path))
    store = TargetStore.load(next((tmp_path / "teacher_outputs").glob("*.jsonl")))
    assert store.top_k == 8 and len(store) == len({p.text for p in ctx.prompts})

    stored = StoredTeacher(store, "cache.jsonl")
    assert not stored.scores_any_sequence and stored.model is None
    assert stored.outputs(ctx, greedy(6)) == outputs
    method = seqkd(tmp_path, greedy(6))
    method.source.prepare(PrepareContext(ctx.prompts, stored, tokenizer, len(tokenizer)))
    gold = next(iter(datamodule.train_dataloader()))
    seq = method.source.sequences(gold, StepContext(tiny_model(tokenizer), stored, tokenizer, len(tokenizer),
                                                    torch.Generator()))
    sparse = stored.distributions(seq, len(tokenizer))
    assert isinstance(sparse, SparseTargets) and sparse.ids.shape == (*seq.target_ids.shape, 8)
    mask = seq.target_mask.bool()
    dense = torch.log_softmax(live.distributions(seq, len(tokenizer)), -1)
    values, ids = dense.topk(8, -1)
    assert torch.equal(sparse.ids[mask], ids[mask])
    torch.testing.assert_close(sparse.log_probs[mask], values[mask], rtol=1e-5, atol=1e-5)
    gold_rows = gold.with_targets(gold.target_ids, gold.target_mask)
    with pytest.raises(ValueError, match="can only score its own stored outputs"):
        stored.distributions(gold_rows, len(tokenizer))  # gold targets are not the teacher's outputs


def test_a_black_box_teachers_text_file_drives_seqkd_and_missing_prompts_are_an_error(tokenizer, datamodule,
                                                                                      tmp_path):
    prompts = datamodule.train_prompts()
    file = tmp_path / "gpt.jsonl"
    file.write_text("".join(json.dumps({"prompt": p.text, "output": f"SELECT {i} FROM t"}) + "\n"
                            for i, p in enumerate(prompts)))

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    stored = StoredTeacher(TargetStore.load(file, encode), str(file))
    out = stored.outputs(PrepareContext(prompts, stored, tokenizer, len(tokenizer)), greedy())
    assert tokenizer.decode(out[3][0].ids, skip_special_tokens=True) == "SELECT 3 FROM t"
    with pytest.raises(ValueError, match="has no log-probabilities"):
        stored.distributions(next(iter(datamodule.train_dataloader())), len(tokenizer))
    file.write_text("".join(json.dumps({"prompt": p.text, "output": "x"}) + "\n" for p in prompts[:-1]))
    partial_store = StoredTeacher(TargetStore.load(file, encode), str(file))
    with pytest.raises(KeyError, match=f"no outputs for 1 of {N_TRAIN} prompts"):
        partial_store.outputs(PrepareContext(prompts, partial_store, tokenizer, len(tokenizer)), greedy())
    file.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="gpt.jsonl: line 1 has no 'output'"):
        TargetStore.load(file, encode)
