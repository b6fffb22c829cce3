"""KID's imperfect rewrite (Zhong et al. 2024): which positions change, and how."""

from __future__ import annotations

import pytest
import torch

from kdlight.losses import ReverseKL
from kdlight.methods import GoldSequences, Method, StepContext
from kdlight.methods.kid import KidSequences
from kdlight.models.lm import output_head, target_logits
from kdlight.training.objective import micro_batch_loss
from tests.helpers import tiny_model, toy_batches
from tests.test_fused_head import GEMMA2_SOFTCAPPED
from tests.test_module import make_module


def context(tokenizer, seed=0):
    student = tiny_model(tokenizer, seed=3).eval()
    return StepContext(student, None, tokenizer, len(tokenizer), torch.Generator().manual_seed(seed), step=0)


def gold(tokenizer):
    return toy_batches(tokenizer, n=8, seed=4)[0]


def masked_logits(student, batch, chosen, tokenizer):
    """[B, T, V] the student's logits with the chosen target positions masked: what KID predicts from."""
    masked = torch.where(chosen, torch.full_like(batch.target_ids, tokenizer.mask_token_id), batch.target_ids)
    with torch.no_grad():
        return target_logits(student, batch.with_targets(masked, batch.target_mask), len(tokenizer))


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
    predicted = masked_logits(ctx.student, batch, chosen, tokenizer).argmax(-1)
    assert torch.equal(rewritten.target_ids[chosen], predicted[chosen])


def test_a_student_without_a_plain_output_head_rewrites_from_its_own_logits(tokenizer):
    """Gemma 2 soft-caps its logits after the projection (no plain head, unlike the Llama above, whose
    chosen positions go through the head alone): its full logits are formed and the chosen rows taken."""
    student = tiny_model(tokenizer, "gemma2", seed=3, **GEMMA2_SOFTCAPPED).eval()
    assert output_head(student) is None
    source, batch = KidSequences(alpha=0.4), gold(tokenizer)

    def step():
        return StepContext(student, None, tokenizer, len(tokenizer), torch.Generator().manual_seed(0))

    chosen, rewritten = source.choose_positions(batch, step()), source.sequences(batch, step())
    predicted = masked_logits(student, batch, chosen, tokenizer).argmax(-1)
    assert torch.equal(rewritten.target_ids[chosen], predicted[chosen])
    assert torch.equal(rewritten.target_ids[~chosen], batch.target_ids[~chosen])


def test_mask_only_ablation_keeps_the_mask_tokens(tokenizer):
    source, batch = KidSequences(alpha=0.5, rewrite="mask_only"), gold(tokenizer)
    chosen = source.choose_positions(batch, context(tokenizer))
    rewritten = source.sequences(batch, context(tokenizer))
    assert (rewritten.target_ids[chosen] == tokenizer.mask_token_id).all()
    assert torch.equal(rewritten.target_ids[~chosen], batch.target_ids[~chosen])


def test_sample_rewrite_draws_from_the_student_under_the_step_generator(tokenizer):
    """`rewrite: sample` draws each chosen token from the student's softmax given the masked
    prefix, with the step's generator: the same seed gives the same rewrite, and over many seeds
    the student's most likely token comes up as often as its probability says."""
    source, batch = KidSequences(alpha=0.4, strategy="uniform", rewrite="sample"), gold(tokenizer)
    ctx = context(tokenizer)
    with torch.no_grad():  # logits x 40: a peaked distribution (a random model's is nearly flat)
        ctx.student.model.norm.weight.mul_(40.0)
    chosen = source.choose_positions(batch, ctx)  # uniform: the same positions for every seed
    probs = torch.softmax(masked_logits(ctx.student, batch, chosen, tokenizer), -1)[chosen]  # [n, V]
    top_p, top = probs.max(-1)

    def rewrite(seed):
        step = StepContext(ctx.student, None, tokenizer, len(tokenizer), torch.Generator().manual_seed(seed))
        return source.sequences(batch, step).target_ids

    rewrites = [rewrite(seed) for seed in range(300)]
    assert torch.equal(rewrites[0], rewrite(0))
    drawn = torch.stack([r[chosen] for r in rewrites])  # [seeds, n]
    assert not torch.equal(drawn[0], drawn[1]) and int(drawn.max()) < len(tokenizer)
    assert all(torch.equal(r[~chosen], batch.target_ids[~chosen]) for r in rewrites)
    hits, expected = float((drawn == top).float().mean()), float(top_p.mean())
    assert abs(hits - expected) < 4 * (expected * (1 - expected) / drawn.numel()) ** 0.5 + 1e-3, (hits, expected)


def test_hard_and_easy_pick_the_highest_and_lowest_entropy_positions(tokenizer):
    batch, ctx = gold(tokenizer), context(tokenizer)
    log_q = torch.log_softmax(target_logits(ctx.student, batch, len(tokenizer)), -1)
    entropy = -(log_q.exp() * log_q).sum(-1)
    hard = KidSequences(alpha=0.25, strategy="hard").choose_positions(batch, ctx)
    easy = KidSequences(alpha=0.25, strategy="easy").choose_positions(batch, ctx)
    compared = 0
    for row in range(batch.size):
        valid = batch.target_mask[row].bool()
        if not 0 < int(hard[row].sum()) < int(valid.sum()):
            continue  # all or none of the row chosen: no ranking to check
        assert entropy[row][hard[row]].min() >= entropy[row][valid & ~hard[row]].max()
        assert entropy[row][easy[row]].max() <= entropy[row][valid & ~easy[row]].min()
        compared += 1
    assert compared >= batch.size // 2  # the check ran on most rows, not on none


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
    ctx = StepContext(kid.student, kid.teacher, tokenizer, len(tokenizer), torch.Generator(), 0)
    sequences = kid.method.source.sequences(batch, ctx)
    assert sequences is batch
    a = micro_batch_loss(kid.method, kid.student, kid.teacher, batch, sequences, len(tokenizer)).terms
    b = micro_batch_loss(rkd.method, rkd.student, rkd.teacher, batch, batch, len(tokenizer)).terms
    assert {k: float(v.total.detach()) for k, v in a.items()} == {k: float(v.total.detach()) for k, v in b.items()}


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


def test_a_tokenizer_without_a_mask_token_gets_a_dedicated_one(sqlgen_root, tokenizer):
    from kdlight.data.tokenizer import MASK_TOKEN, train_tokenizer
    from kdlight.models.vocab import ModelVocab, add_mask_token, shared_vocab_size

    texts = ["SELECT name FROM singer WHERE age > 3", "How many singers are there?"] * 50
    bare = train_tokenizer(texts, vocab_size=300, mask_token=False)
    assert bare.mask_token_id is None
    size = len(bare)
    exact, padded = tiny_model(bare, seed=0), tiny_model(bare, seed=1, pad_multiple=64)
    assert add_mask_token(bare, [exact, padded]) and bare.mask_token == MASK_TOKEN and bare.mask_token_id == size
    assert exact.get_input_embeddings().weight.shape[0] == size + 1  # one new row
    assert padded.get_input_embeddings().weight.shape[0] == -(-size // 64) * 64  # it had room already
    assert not add_mask_token(bare, [exact])  # once only
    # A student saved with the added token still matches a teacher whose tokenizer lacks it.
    teacher_tokenizer = train_tokenizer(texts, vocab_size=300, mask_token=False)
    assert shared_vocab_size(bare, [ModelVocab("teacher", padded, teacher_tokenizer)]) == size + 1
    rewritten = KidSequences(alpha=0.5, rewrite="mask_only").sequences(
        toy_batches(bare, n=4)[0], StepContext(exact, None, bare, len(bare), torch.Generator(), 0))
    assert (rewritten.target_ids == size).any()


def test_bos_as_the_mask_token_is_an_option(tokenizer):
    source, batch = KidSequences(alpha=0.5, rewrite="mask_only", mask_token="bos"), gold(tokenizer)
    rewritten = source.sequences(batch, context(tokenizer))
    changed = rewritten.target_ids != batch.target_ids
    assert changed.any() and (rewritten.target_ids[changed] == tokenizer.bos_token_id).all()
    with pytest.raises(ValueError, match="mask_token must be"):
        KidSequences(mask_token="pad")


def test_kid_run_adds_the_mask_token_and_saves_it_with_the_student(sqlgen_root, tmp_path):
    from kdlight.cli.train import train
    from kdlight.data.tokenizer import MASK_TOKEN, load_tokenizer, train_tokenizer
    from kdlight.tasks.text2sql.spider import PromptParts, SpiderSource, load_examples
    from tests.test_configs import compose_cfg

    examples, _ = load_examples(SpiderSource(str(sqlgen_root)), "train.json", PromptParts())
    train_tokenizer([t for e in examples for t in (e.prompt, e.target)], 400, mask_token=False).save_pretrained(
        tmp_path / "tokenizer")
    cfg = compose_cfg(["debug=fdr", "method=kid", f"tokenizer.path={tmp_path / 'tokenizer'}"], tmp_path)
    assert train(cfg)["steps"] == 2
    saved = load_tokenizer(tmp_path / "run" / "model")
    assert saved.mask_token == MASK_TOKEN and saved.mask_token_id == len(saved) - 1


@pytest.mark.parametrize("fused", [True, False])
def test_ce_gold_on_sequences_reads_the_rewrite_and_scores_the_gold_tokens(tokenizer, fused):
    """ce_on=gold_on_sequences: CE of the gold tokens given the rewritten prefix, from the same
    student pass as the divergence; ce_on=gold keeps CE on the clean gold sequence."""
    one_pass = make_module(tokenizer, Method("kid1", KidSequences(alpha=0.4), ReverseKL(), ce_on="gold_on_sequences"))
    batch = gold(tokenizer)
    ctx = StepContext(one_pass.student, one_pass.teacher, tokenizer, len(tokenizer), torch.Generator().manual_seed(0))
    rewritten = one_pass.method.source.sequences(batch, ctx)
    assert not torch.equal(rewritten.target_ids, batch.target_ids)
    terms = micro_batch_loss(one_pass.method, one_pass.student, one_pass.teacher, batch, rewritten, len(tokenizer),
                       fused=fused).terms
    mask = batch.target_mask.bool()
    logits = target_logits(one_pass.student, rewritten, len(tokenizer))[mask]
    expected = torch.nn.functional.cross_entropy(logits, batch.target_ids[mask], reduction="sum")
    torch.testing.assert_close(terms["ce"].total, expected.detach(), rtol=1e-5, atol=1e-5)
    assert terms["ce"].over == "gold"
    two_pass = Method("kid", KidSequences(alpha=0.4), ReverseKL(), ce_on="gold")
    clean = micro_batch_loss(two_pass, one_pass.student, one_pass.teacher, batch, rewritten, len(tokenizer), fused=fused).terms
    torch.testing.assert_close(terms["kd_rkl"].total, clean["kd_rkl"].total)
    assert not torch.allclose(clean["ce"].total, terms["ce"].total, rtol=1e-5)  # another prefix, another value


def test_kid_reads_the_gold_labels_through_its_rewrite_unless_told_otherwise():
    """The default CE comes from the source: KID's rewrite keeps gold's positions, other sources' do not."""
    from kdlight.methods.on_policy import StudentSamples

    assert Method("kid", KidSequences(), ReverseKL()).ce_on == "gold_on_sequences"
    assert Method("kid", KidSequences(), ReverseKL(), ce_on="gold").ce_on == "gold"
    assert Method("rkd", GoldSequences(), ReverseKL()).ce_on == "gold"
    assert Method("gkd", StudentSamples(lam=0.5), ReverseKL()).ce_on == "gold"


def test_ce_gold_on_sequences_refuses_sequences_of_other_lengths(tokenizer):
    module = make_module(tokenizer, Method("x", GoldSequences(), ReverseKL(), ce_on="gold_on_sequences"))
    batch, other = gold(tokenizer), toy_batches(tokenizer, n=8, seed=9)[0]
    sequences = batch.with_targets(other.target_ids, other.target_mask)
    with pytest.raises(ValueError, match="gold_on_sequences needs the source's sequences to align"):
        micro_batch_loss(module.method, module.student, module.teacher, batch, sequences, len(tokenizer))
    with pytest.raises(ValueError, match="ce_on must be one of"):
        Method("x", GoldSequences(), ReverseKL(), ce_on="labels")


def test_ce_gold_on_sequences_is_refused_for_sources_that_write_other_sequences():
    from kdlight.methods.on_policy import StudentSamples

    with pytest.raises(ValueError, match="StudentSamples does not keep gold's target positions"):
        Method("gkd", StudentSamples(lam=0.5), ReverseKL(), ce_on="gold_on_sequences")
