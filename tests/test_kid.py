"""KID's imperfect rewrite (Zhong et al. 2024): which positions change, and how."""

from __future__ import annotations

import pytest
import torch

from kdlight.losses import ReverseKL
from kdlight.methods import GoldSequences, Method, StepContext
from kdlight.methods.kid import KidSequences
from kdlight.models.lm import target_logits
from tests.test_module import make_module
from tests.helpers import tiny_model, toy_batches


def context(tokenizer, seed=0):
    student = tiny_model(tokenizer, seed=3).eval()
    return StepContext(student, None, tokenizer, len(tokenizer), torch.Generator().manual_seed(seed), step=0)


def gold(tokenizer):
    return toy_batches(tokenizer, n=8, seed=4)[0]


@pytest.mark.parametrize("strategy", ["random", "uniform", "hard", "easy"])
def test_exactly_the_chosen_positions_change_and_the_prompt_never_does(tokenizer, strategy):
    source, ctx, batch = KidSequences(alpha=0.4, strategy=strategy), context(tokenizer), gold(tokenizer)
    chosen = source.choose_positions(batch, context(tokenizer))  # same seed as the rewrite below
    rewritten = source.sequences(batch, ctx)
    assert torch.equal(rewritten.prompt_ids, batch.prompt_ids) and torch.equal(rewritten.prompt_mask, batch.prompt_mask)
    assert torch.equal(rewritten.target_mask, batch.target_mask)
    assert not (chosen & ~batch.target_mask.bool()).any()  # only real target positions
    lengths = batch.target_mask.sum(-1)
    assert torch.equal(chosen.sum(-1), torch.round(0.4 * lengths.float()).long())
    changed = rewritten.target_ids != batch.target_ids
    assert not (changed & ~chosen).any()  # nothing outside the chosen positions changes
    # the rewrite is the student's argmax given the masked prefix, at exactly the chosen positions
    masked = torch.where(chosen, torch.full_like(batch.target_ids, tokenizer.mask_token_id), batch.target_ids)
    predicted = target_logits(ctx.student, batch.with_targets(masked, batch.target_mask), len(tokenizer)).argmax(-1)
    assert torch.equal(rewritten.target_ids[chosen], predicted[chosen])


def test_mask_only_ablation_keeps_the_mask_tokens(tokenizer):
    source, batch = KidSequences(alpha=0.5, rewrite="mask_only"), gold(tokenizer)
    chosen = source.choose_positions(batch, context(tokenizer))
    rewritten = source.sequences(batch, context(tokenizer))
    assert (rewritten.target_ids[chosen] == tokenizer.mask_token_id).all()
    assert torch.equal(rewritten.target_ids[~chosen], batch.target_ids[~chosen])


def test_hard_and_easy_pick_the_highest_and_lowest_entropy_positions(tokenizer):
    batch, ctx = gold(tokenizer), context(tokenizer)
    log_q = torch.log_softmax(target_logits(ctx.student, batch, len(tokenizer)), -1)
    entropy = -(log_q.exp() * log_q).sum(-1)
    hard = KidSequences(alpha=0.25, strategy="hard").choose_positions(batch, ctx)
    easy = KidSequences(alpha=0.25, strategy="easy").choose_positions(batch, ctx)
    for row in range(batch.size):
        valid = batch.target_mask[row].bool()
        inside, outside = entropy[row][hard[row]], entropy[row][valid & ~hard[row]]
        if len(inside) and len(outside):
            assert inside.min() >= outside.max()
        inside, outside = entropy[row][easy[row]], entropy[row][valid & ~easy[row]]
        if len(inside) and len(outside):
            assert inside.max() <= outside.min()


def test_uniform_positions_are_evenly_spaced(tokenizer):
    batch = gold(tokenizer)
    chosen = KidSequences(alpha=0.5, strategy="uniform").choose_positions(batch, context(tokenizer))
    for row in range(batch.size):
        n = int(batch.target_mask[row].sum())
        k = round(0.5 * n)
        assert chosen[row].nonzero().flatten().tolist() == [int((j + 0.5) * n / k) for j in range(k)]


def test_bernoulli_count_masks_about_alpha_of_the_tokens(tokenizer):
    batch = gold(tokenizer)
    rates = [float(KidSequences(alpha=0.3, count="token").choose_positions(batch, context(tokenizer, seed)).sum())
             / float(batch.target_mask.sum()) for seed in range(200)]
    assert sum(rates) / len(rates) == pytest.approx(0.3, abs=0.03)


def test_alpha_zero_is_rkd_on_gold(tokenizer):
    kid = make_module(tokenizer, Method("kid", KidSequences(alpha=0.0), ReverseKL()))
    rkd = make_module(tokenizer, Method("rkd", GoldSequences(), ReverseKL()))
    batch = gold(tokenizer)
    ctx = StepContext(kid.student, kid.teacher.model, tokenizer, len(tokenizer), torch.Generator(), 0)
    sequences = kid.method.source.sequences(batch, ctx)
    assert sequences is batch
    a, b = kid._loss_terms(batch, sequences, same=True), rkd._loss_terms(batch, batch, same=True)
    assert {k: float(v[0].detach()) for k, v in a.items()} == {k: float(v[0].detach()) for k, v in b.items()}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="alpha must be in"):
        KidSequences(alpha=1.5)
    with pytest.raises(ValueError, match="count=token"):
        KidSequences(count="token", strategy="hard")
    with pytest.raises(ValueError, match="strategy in"):
        KidSequences(strategy="middle")


def test_prediction_runs_without_dropout_and_restores_train_mode(tokenizer):
    student = tiny_model(tokenizer, seed=3, attention_dropout=0.9).train()  # dropout would scramble predictions
    batch = gold(tokenizer)
    source = KidSequences(alpha=0.5, strategy="hard")
    runs = [source.sequences(batch, StepContext(student, None, tokenizer, len(tokenizer),
                                                torch.Generator().manual_seed(0), 0)) for _ in range(2)]
    assert torch.equal(runs[0].target_ids, runs[1].target_ids)
    assert student.training
