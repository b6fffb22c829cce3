"""The cached sparse teacher: the live teacher's top-k, scored once per sequence, read back by every
later epoch and student; exactly the sparse loss of the live top-k; refused where sequences change."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from kdlight.data.module import DataSpec
from kdlight.losses import ForwardKL, ReverseKL
from kdlight.losses.sparse import SparseTargets
from kdlight.methods import GoldSequences, Method
from kdlight.methods.kid import KidSequences
from kdlight.methods.on_policy import StudentSamples
from kdlight.models import ModelSpec, target_logits
from kdlight.models.lm import target_positions
from kdlight.run import Run, train
from kdlight.tasks.text2sql import PromptParts, SpiderSource, Text2SQLTask
from kdlight.training import teacher_cache
from kdlight.training.module import DistillationModule, LoopOptions
from kdlight.training.teacher import LiveTeacher
from kdlight.training.teacher_cache import CachedSparseTeacher, TeacherCacheSpec, batch_keys, check_cacheable
from tests.helpers import sqlgen_datamodule, TINY_LLAMA, cpu_trainer, tiny_model

N_TRAIN = 12


@pytest.fixture
def datamodule(sqlgen_root, tokenizer):
    return sqlgen_datamodule(sqlgen_root, tokenizer, N_TRAIN)


@pytest.fixture
def teacher_forwards():
    """Counts the forward passes of the teacher models given to `count`."""
    calls = []

    def count(model):
        model.register_forward_pre_hook(lambda *_: calls.append(1))
        return model

    count.calls = calls
    return count


def fkd(divergence=None) -> Method:
    return Method("fkd", GoldSequences(), divergence or ForwardKL(), ce_weight=1.0, kd_weight=1.0)


def epochs(datamodule):
    """`prepare`'s view of the training data: every gold batch of an epoch."""
    return lambda epoch: iter(datamodule.train_dataloader())


def cached(tokenizer, cache_dir, top_k=8, seed=1, model=None) -> CachedSparseTeacher:
    live = LiveTeacher(model if model is not None else tiny_model(tokenizer, seed=seed))
    return CachedSparseTeacher(live, top_k, len(tokenizer), str(cache_dir) if cache_dir else None)


def distinct_sequences(datamodule) -> int:
    return len({k for batch in datamodule.train_dataloader() for k in batch_keys(batch)})


def test_cached_top_k_is_the_live_top_k_and_its_loss_and_gradient_are_the_sparse_loss_of_the_live_teacher(
        tokenizer, datamodule, tmp_path):
    teacher = cached(tokenizer, tmp_path, top_k=8)
    batch = next(iter(datamodule.train_dataloader()))
    live = torch.log_softmax(target_logits(teacher.model, batch, len(tokenizer)).float(), -1)
    values, ids = live.topk(8, dim=-1)
    mask = batch.target_mask
    targets = teacher.distributions(batch, len(tokenizer))  # scored now, then kept
    again = cached(tokenizer, tmp_path, top_k=8).distributions(batch, len(tokenizer))  # read from disk
    for got in (targets, again):
        assert torch.equal(got.ids[mask.bool()], ids[mask.bool()])
        assert torch.equal(got.log_probs[mask.bool()], values[mask.bool()])
    student_logits = target_logits(tiny_model(tokenizer, seed=0), batch, len(tokenizer))[mask.bool()]
    reference = SparseTargets(ids[mask.bool()], values[mask.bool()])
    for divergence in (ForwardKL(), ReverseKL(), ForwardKL(missing_mass="rest")):
        grads = []
        for teacher_targets in (again.take(target_positions(mask)), reference):
            logits = student_logits.detach().requires_grad_(True)
            loss = divergence(logits, teacher_targets)
            loss.sum().backward()
            grads.append((loss.detach(), logits.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        assert grads[0][0].abs().sum() > 0


@pytest.mark.parametrize("divergence", [ForwardKL(), ReverseKL()], ids=["fkl", "rkl"])
def test_full_support_renormalised_is_the_dense_divergence(tokenizer, datamodule, divergence):
    vocab = len(tokenizer)
    teacher = cached(tokenizer, None, top_k=10 * vocab)  # capped at the vocabulary: every token kept
    batch = next(iter(datamodule.train_dataloader()))
    mask = batch.target_mask
    student_logits = target_logits(tiny_model(tokenizer, seed=0), batch, vocab)[mask.bool()]
    dense = target_logits(teacher.model, batch, vocab)[mask.bool()]
    sparse = teacher.distributions(batch, vocab).take(target_positions(mask))
    assert teacher.top_k == vocab and sparse.ids.shape[1] == vocab
    torch.testing.assert_close(divergence(student_logits, sparse), divergence(student_logits, dense),
                               rtol=1e-5, atol=1e-6)


def fit(tokenizer, datamodule, teacher, tmp_path, student_seed=0, **student_config):
    student = tiny_model(tokenizer, seed=student_seed, **student_config)
    module = DistillationModule(student, fkd(), tokenizer, len(tokenizer), partial(torch.optim.SGD, lr=0.1),
                                LoopOptions(warmup_steps=1), teacher)
    cpu_trainer(tmp_path, 4, limit_val_batches=0).fit(module, datamodule=datamodule)
    return module


def test_training_set_scored_once_before_training_and_a_second_student_reads_it_without_a_teacher_forward(
        tokenizer, datamodule, tmp_path, teacher_forwards):
    n = distinct_sequences(datamodule)
    first = cached(tokenizer, tmp_path / "cache", model=teacher_forwards(tiny_model(tokenizer, seed=1)))
    fit(tokenizer, datamodule, first, tmp_path / "a")
    assert first.scored == n and len(first.store.entries) == n
    assert len(teacher_forwards.calls) == N_TRAIN // 4  # the precompute, one forward per batch; none in training
    assert list((tmp_path / "cache" / "teacher_topk").glob("*/shard-*.pt"))
    assert not list((tmp_path / "cache" / "teacher_topk").glob("*/.*"))  # no temporary file left

    teacher_forwards.calls.clear()  # another student (another size), the same teacher checkpoint
    second = cached(tokenizer, tmp_path / "cache", model=teacher_forwards(tiny_model(tokenizer, seed=1)))
    module = fit(tokenizer, datamodule, second, tmp_path / "b", student_seed=3, hidden_size=24)
    assert second.scored == 0 and teacher_forwards.calls == []
    assert second.folder == first.folder

    # Held-out KL still asks the live teacher, densely: the same value as a run without the cache.
    trainer = cpu_trainer(tmp_path / "v", 1)
    with_cache = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/kl_from_teacher"]
    module.teacher = second.live
    live = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/kl_from_teacher"]
    assert with_cache == live > 0 and len(teacher_forwards.calls) == 2  # one validation batch each


def test_a_changed_k_or_teacher_makes_another_cache(tokenizer, datamodule, tmp_path):
    first = cached(tokenizer, tmp_path, top_k=8)
    first.prepare(fkd(), epochs(datamodule), lambda obj: [obj])
    same = cached(tokenizer, tmp_path, top_k=8)
    other_k = cached(tokenizer, tmp_path, top_k=16)
    other_teacher = cached(tokenizer, tmp_path, top_k=8, seed=2)
    assert same.folder == first.folder and len(same.store.entries) == first.scored > 0
    assert len({first.folder, other_k.folder, other_teacher.folder}) == 3
    for fresh in (other_k, other_teacher):
        assert not fresh.store.entries
        fresh.prepare(fkd(), epochs(datamodule), lambda obj: [obj])
        assert fresh.scored == first.scored
    assert other_k.distributions(next(iter(datamodule.train_dataloader())), len(tokenizer)).ids.shape[-1] == 16


def alter(path: Path) -> None:
    """A shard that still loads, with one log-probability changed (what a checksum must catch)."""
    shard = torch.load(path, weights_only=True)
    shard["log_probs"][0, 0] += 1.0
    torch.save(shard, path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [truncate, alter], ids=["truncated", "altered"])
def test_a_damaged_shard_is_detected_and_scored_again_never_used(tokenizer, datamodule, tmp_path, damage, caplog):
    first = cached(tokenizer, tmp_path)
    first.prepare(fkd(), epochs(datamodule), lambda obj: [obj])
    (shard,) = first.folder.glob("shard-*.pt")
    damage(shard)
    batch = next(iter(datamodule.train_dataloader()))
    expected = first.distributions(batch, len(tokenizer))

    second = cached(tokenizer, tmp_path)
    assert "damaged" in caplog.text and not shard.exists() and not second.store.entries
    second.prepare(fkd(), epochs(datamodule), lambda obj: [obj])
    assert second.scored == first.scored
    got = second.distributions(batch, len(tokenizer))
    assert torch.equal(got.ids, expected.ids) and torch.equal(got.log_probs, expected.log_probs)


def test_a_killed_precompute_resumes_with_the_sequences_it_lacks(tokenizer, datamodule, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_cache, "FLUSH_SEQUENCES", 4)  # a shard per batch of 4

    def killed_after_two_batches(epoch):
        for number, batch in enumerate(datamodule.train_dataloader()):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        cached(tokenizer, tmp_path).prepare(fkd(), killed_after_two_batches, lambda obj: [obj])
    resumed = cached(tokenizer, tmp_path)
    done = len(resumed.store.entries)
    assert done == len({k for i, b in enumerate(datamodule.train_dataloader()) if i < 2 for k in batch_keys(b)})
    resumed.prepare(fkd(), epochs(datamodule), lambda obj: [obj])
    assert resumed.scored == distinct_sequences(datamodule) - done > 0


@pytest.mark.parametrize("method,setting", [
    (Method("kid", KidSequences(), ReverseKL()), "KidSequences"),
    (Method("gkd", StudentSamples(lam=0.5), ForwardKL()), "StudentSamples"),
    (Method("noisy_kd", GoldSequences(), ForwardKL(), teacher_dropout=True), "dropout"),
    (Method("sft", GoldSequences(), None), "no divergence"),
], ids=["kid", "on_policy", "noisy", "sft"])
def test_refused_where_the_sequences_or_the_teacher_change_per_step(method, setting, tmp_path, sqlgen_root):
    with pytest.raises(ValueError, match=f"teacher_cache.top_k.*{method.name}.*{setting}"):
        check_cacheable(method)
    # The run refuses it before loading anything.
    task = Text2SQLTask(SpiderSource(str(sqlgen_root / "missing")), PromptParts())
    run = Run(DataSpec(task), ModelSpec("s", "llama", TINY_LLAMA), method, ModelSpec("t", "llama", TINY_LLAMA),
              teacher_kl=method.divergence is None, teacher_cache=TeacherCacheSpec(16, cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="teacher_cache.top_k"):
        train(run, tmp_path / "run")


@pytest.mark.parametrize("top_k,missing_mass,error", [(0, "renormalize", "top_k"), (16, "drop", "missing_mass")])
def test_bad_settings_name_their_key(top_k, missing_mass, error):
    with pytest.raises(ValueError, match=f"teacher_cache.{error}"):
        TeacherCacheSpec(top_k, missing_mass)


def test_the_command_line_run_uses_the_cache_and_a_second_run_reads_it(tmp_path):
    from kdlight.cli.train import train as cli_train
    from tests.test_configs import compose_cfg

    overrides = ["debug=fdr", "method=fkd", "teacher_cache.top_k=16", "teacher_cache.missing_mass=rest"]
    cfg = compose_cfg(overrides, tmp_path / "a")
    metrics = cli_train(cfg)
    folders = list((Path(cfg.paths.cache_dir) / "teacher_topk").iterdir())
    shards = sorted(folders[0].glob("shard-*.pt"))
    assert len(folders) == 1 and shards and metrics["val/kl_from_teacher"] > 0 and metrics["teacher_params"] > 0
    assert json.loads((folders[0] / "key.json").read_text())["top_k"] == 16
    config = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert config["steps"] == 2
    cli_train(compose_cfg(overrides, tmp_path / "b"))  # the same teacher checkpoint: nothing scored again
    assert sorted(folders[0].glob("shard-*.pt")) == shards
