"""Student samples as targets (GKD, ImitKD): when targets are replaced, by what, and what never changes."""

from __future__ import annotations

import pytest
import torch

from kdlight.losses import GeneralizedJSD
from kdlight.methods import GoldSequences, Method, StepContext
from kdlight.methods.on_policy import StudentSamples
from kdlight.models import Decoding, generate
from kdlight.training.objective import micro_batch_loss
from tests.helpers import cpu_trainer, loader, tiny_model, toy_batches
from tests.test_module import make_module

SAMPLE_6 = Decoding("sample", max_new_tokens=6)


def context(tokenizer, student, seed=0):
    return StepContext(student, None, tokenizer, len(tokenizer), torch.Generator().manual_seed(seed), step=0)


def test_lambda_zero_is_the_gold_sequence_method(tokenizer):
    gkd = make_module(tokenizer, Method("gkd", StudentSamples(lam=0.0), GeneralizedJSD(beta=0.5), ce_weight=0.0))
    gold_method = make_module(tokenizer, Method("jsd", GoldSequences(), GeneralizedJSD(beta=0.5), ce_weight=0.0))
    batch = toy_batches(tokenizer)[0]
    for step in range(5):  # never replaced, whatever the draws
        assert gkd.method.source.sequences(batch, context(tokenizer, gkd.student, seed=step)) is batch
    a = micro_batch_loss(gkd.method, gkd.student, gkd.teacher, batch, batch, len(tokenizer)).terms
    b = micro_batch_loss(gold_method.method, gold_method.student, gold_method.teacher, batch, batch, len(tokenizer)).terms
    assert {k: float(v.total.detach()) for k, v in a.items()} == {k: float(v.total.detach()) for k, v in b.items()}


def test_lambda_one_replaces_every_target_with_student_samples_and_keeps_prompts(tokenizer):
    student = tiny_model(tokenizer, seed=2)
    source, batch = StudentSamples(lam=1.0, decoding=SAMPLE_6), toy_batches(tokenizer)[0]
    ctx = context(tokenizer, student)
    torch.manual_seed(11)
    replaced = source.sequences(batch, ctx)
    torch.manual_seed(11)
    expected = generate(student.eval(), batch, SAMPLE_6, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    assert replaced.targets() == expected and replaced.targets() != batch.targets()
    assert torch.equal(replaced.prompt_ids, batch.prompt_ids) and torch.equal(replaced.prompt_mask, batch.prompt_mask)
    assert ctx.timings["generation_s"] > 0  # reported apart from the loss step


def test_per_example_mixes_gold_and_samples(tokenizer):
    student = tiny_model(tokenizer, seed=2)
    batch = toy_batches(tokenizer, n=16)[0]
    out = StudentSamples(lam=0.5, per="example", decoding=SAMPLE_6).sequences(batch, context(tokenizer, student))
    kept = [a == b for a, b in zip(out.targets(), batch.targets())]
    assert 0 < sum(kept) < batch.size  # some gold, some samples in one batch
    assert torch.equal(out.prompt_ids, batch.prompt_ids)


def test_per_batch_replaces_all_or_nothing(tokenizer):
    student = tiny_model(tokenizer, seed=2)
    batch = toy_batches(tokenizer, n=8)[0]
    outcomes = set()
    for seed in range(8):
        out = StudentSamples(lam=0.5, decoding=SAMPLE_6).sequences(batch, context(tokenizer, student, seed))
        kept = [a == b for a, b in zip(out.targets(), batch.targets())]
        assert all(kept) or not any(kept)
        outcomes.add(all(kept))
    assert outcomes == {True, False}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="lam in"):
        StudentSamples(lam=2.0)
    with pytest.raises(ValueError, match="per in"):
        StudentSamples(per="token")


def test_gkd_with_lambda_one_fits_with_a_plain_dataloader(tokenizer, tmp_path):
    """Only student samples, nothing precomputed: no data module with training prompts is needed."""
    method = Method("gkd", StudentSamples(lam=1.0, decoding=SAMPLE_6), GeneralizedJSD(beta=0.5), ce_weight=0.0)
    assert not method.source.needs_preparation and method.source.covers_unlabeled
    module = make_module(tokenizer, method)
    before = {n: p.detach().clone() for n, p in module.student.named_parameters()}
    cpu_trainer(tmp_path, max_steps=2).fit(module, train_dataloaders=loader(toy_batches(tokenizer)))
    assert module.global_step == 2 and module.step_metrics["train/generation_s"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in module.student.named_parameters())
