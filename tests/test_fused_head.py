"""The fused output head: the same loss values and gradients as full logits, with no [N, V] logits."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from kdlight.losses import (ForwardKL, GeneralizedJSD, JensenShannon, ReverseKL, SkewForwardKL, SkewReverseKL,
                            TotalVariation)
from kdlight.losses.fused import HeadInputs, fused_head_loss
from kdlight.losses.sparse import SparseTargets
from kdlight.methods import GoldSequences, Method
from kdlight.models.lm import OutputHead, output_head, take_positions, target_logits, target_positions
from kdlight.models.lora import LoraSpec, add_lora
from kdlight.training.module import DistillationModule, LoopOptions
from kdlight.training.objective import micro_batch_loss
from kdlight.training.teacher import LiveTeacher
from kdlight.training.teacher_cache import CachedSparseTeacher
from tests.helpers import TINY_LLAMA, cpu_trainer, loader, tiny_model, toy_batches

DIVERGENCES = [ForwardKL(), ReverseKL(), JensenShannon(), GeneralizedJSD(beta=0.3), TotalVariation(),
               SkewForwardKL(alpha=0.1), SkewReverseKL(alpha=0.1), ForwardKL(temperature=2.0)]


def head_problem(n=11, hidden=6, vocab=23, rows=27, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float32)
    weight = torch.randn(rows, hidden, generator=g, dtype=torch.float32)
    b = torch.randn(rows, generator=g, dtype=torch.float32) if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    teacher_hidden = torch.randn(n, hidden, generator=g, dtype=torch.float32)
    teacher_head = OutputHead(torch.randn(rows, hidden, generator=g, dtype=torch.float32) * 2)
    return h, weight, b, targets, HeadInputs(teacher_hidden, teacher_head), vocab


def reference(h, weight, b, vocab, targets, ce_scale, divergence, teacher, kd_scale):
    """The unfused loss: full logits, autograd through the projection."""
    logits = torch.nn.functional.linear(h, weight[:vocab], b[:vocab] if b is not None else None)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    kd = divergence(logits, teacher).sum()
    return ce * ce_scale + kd * kd_scale, ce, kd


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


@pytest.mark.parametrize("divergence", DIVERGENCES, ids=lambda d: f"{d.name}-t{d.temperature}")
@pytest.mark.parametrize("chunk", [1, 4, None])
def test_values_and_gradients_equal_full_logits(divergence, chunk):
    h, weight, b, targets, teacher, vocab = head_problem()
    with torch.no_grad():
        dense_teacher = torch.nn.functional.linear(teacher.hidden, teacher.head.weight[:vocab])
    h1, w1, b1 = leaves(h, weight, b)
    loss, sums = fused_head_loss(h1, OutputHead(w1, b1), vocab, ce_targets=targets, ce_scale=0.3,
                                 divergence=divergence, teacher=teacher, kd_scale=0.7, chunk_size=chunk)
    loss.backward()
    h2, w2, b2 = leaves(h, weight, b)
    expected, ce, kd = reference(h2, w2, b2, vocab, targets, 0.3, divergence, dense_teacher, 0.7)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sums, torch.stack([ce, kd]).detach(), rtol=1e-5, atol=1e-6)
    for fused, full in ((h1, h2), (w1, w2), (b1, b2)):
        torch.testing.assert_close(fused.grad, full.grad, rtol=1e-5, atol=1e-6)
    assert w1.grad[vocab:].abs().sum() == 0  # padding rows of the embedding get no gradient


def test_a_sparse_teacher_and_a_frozen_tied_head():
    """Top-k rows as the teacher; a head without gradient (LoRA) passes the gradient to the hidden states only."""
    h, weight, _, _, teacher, vocab = head_problem(bias=False)
    logits = torch.nn.functional.linear(teacher.hidden, teacher.head.weight[:vocab])
    values, ids = torch.log_softmax(logits, -1).topk(5, dim=-1)
    for missing_mass in ("renormalize", "rest"):
        divergence = ReverseKL(missing_mass=missing_mass)
        (h1,) = leaves(h)
        loss, _ = fused_head_loss(h1, OutputHead(weight), vocab, divergence=divergence,
                                  teacher=SparseTargets(ids, values), kd_scale=1.0, chunk_size=3)
        loss.backward()
        (h2,) = leaves(h)
        expected = divergence(torch.nn.functional.linear(h2, weight[:vocab]), SparseTargets(ids, values)).sum()
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 5, None])
def test_divergence_rows_and_cross_entropy_rows_stacked_in_one_call(chunk):
    """Divergence on the first 7 rows, CE on the last 8 (rows 5-6 take both): the sum of the two
    terms on their own rows, with chunks that straddle where each starts and ends."""
    h, weight, b, targets, teacher, vocab = head_problem(n=13)
    kd_teacher = HeadInputs(teacher.hidden[:7], teacher.head)
    with torch.no_grad():
        dense_teacher = torch.nn.functional.linear(kd_teacher.hidden, teacher.head.weight[:vocab])
    divergence = GeneralizedJSD(beta=0.3)
    h1, w1, b1 = leaves(h, weight, b)
    loss, sums = fused_head_loss(h1, OutputHead(w1, b1), vocab, ce_targets=targets[-8:],
                                 ce_scale=0.3, divergence=divergence, teacher=kd_teacher, kd_scale=0.7,
                                 chunk_size=chunk)
    loss.backward()
    h2, w2, b2 = leaves(h, weight, b)
    logits = torch.nn.functional.linear(h2, w2[:vocab], b2[:vocab])
    ce = torch.nn.functional.cross_entropy(logits[-8:], targets[-8:], reduction="sum")
    kd = divergence(logits[:7], dense_teacher).sum()
    (0.3 * ce + 0.7 * kd).backward()
    torch.testing.assert_close(sums, torch.stack([ce, kd]).detach(), rtol=1e-5, atol=1e-6)
    for fused, full in ((h1, h2), (w1, w2), (b1, b2)):
        torch.testing.assert_close(fused.grad, full.grad, rtol=1e-5, atol=1e-6)
    assert h1.grad[5:7].abs().sum() > 0 and h1.grad[:5].abs().sum() > 0 and h1.grad[7:].abs().sum() > 0


def test_nothing_to_compute_is_refused():
    h, weight, *_ = head_problem()
    with pytest.raises(ValueError, match="needs a cross-entropy term, a divergence, or both"):
        fused_head_loss(h, OutputHead(weight), 20)
    with pytest.raises(ValueError, match="needs the teacher"):
        fused_head_loss(h, OutputHead(weight), 20, divergence=ForwardKL(), kd_scale=1.0)
    with pytest.raises(ValueError, match="11 rows of hidden states, 4 for the divergence .* and 3 for the cross"):
        fused_head_loss(h, OutputHead(weight), 20, ce_targets=torch.zeros(3, dtype=torch.long),
                        divergence=ForwardKL(), teacher=torch.zeros(4, 20), kd_scale=1.0)


def grads_after(loss_fn, model):
    model.zero_grad(set_to_none=True)
    out = loss_fn()
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(tokenizer, method, student, teacher, gold, sequences=None, counts=None):
    """Fused and unfused micro-batch losses: same loss, same term sums, same gradients."""
    sequences = sequences or gold
    vocab = len(tokenizer)
    results = [grads_after(partial(micro_batch_loss, method, student, teacher, gold, sequences, vocab, counts,
                                   fused=fused), student) for fused in (True, False)]
    (fused, fused_grads), (full, full_grads) = results
    torch.testing.assert_close(fused.loss, full.loss, rtol=1e-5, atol=1e-7)
    assert list(fused.terms) == list(full.terms)
    for name in full.terms:
        torch.testing.assert_close(fused.terms[name].total, full.terms[name].total, rtol=1e-5, atol=1e-6)
        assert (fused.terms[name].weight, fused.terms[name].over) == (full.terms[name].weight, full.terms[name].over)
    assert fused_grads.keys() == full_grads.keys() and fused_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return fused


@pytest.mark.parametrize("method", [Method("rkd", GoldSequences(), ReverseKL(), ce_weight=0.5),
                                    Method("sft", GoldSequences(), None, ce_weight=1.0),
                                    Method("jsd", GoldSequences(), GeneralizedJSD(beta=0.5), ce_weight=0.0)],
                         ids=lambda m: m.name)
def test_micro_batch_loss_fused_equals_full_logits_with_a_live_teacher(tokenizer, method):
    student = tiny_model(tokenizer, seed=0)
    teacher = LiveTeacher(tiny_model(tokenizer, seed=1, pad_multiple=64, tie_word_embeddings=False))
    batch = toy_batches(tokenizer)[0]
    assert output_head(student) is not None and output_head(teacher.model) is not None
    out = assert_same_step(tokenizer, method, student, teacher, batch, counts={"gold": 7.0, "sequences": 7.0})
    n = float(batch.target_mask.sum())
    assert out.share(next(iter(out.terms)), {"gold": n, "sequences": n}) > 0


def test_ce_on_gold_and_divergence_on_other_sequences(tokenizer):
    """Two student passes (CE on gold, divergence on the source's sequences), each divided by its own count."""
    student, teacher = tiny_model(tokenizer, seed=0), LiveTeacher(tiny_model(tokenizer, seed=1))
    gold = toy_batches(tokenizer, seed=0)[0]
    other = toy_batches(tokenizer, seed=1)[0]
    sequences = type(gold)(gold.prompt_ids, gold.prompt_mask, *other.tensors()[2:])
    method = Method("seqkd+ce", GoldSequences(), ForwardKL(), ce_weight=0.5, ce_on="gold")
    out = assert_same_step(tokenizer, method, student, teacher, gold, sequences, {"gold": 3.0, "sequences": 5.0})
    assert (out.terms["ce"].over, out.terms["kd_fkl"].over) == ("gold", "sequences")
    expected = 0.5 * out.terms["ce"].total / 3.0 + out.terms["kd_fkl"].total / 5.0
    torch.testing.assert_close(out.loss.detach(), expected)


def test_lora_student_and_cached_sparse_teacher(tokenizer):
    student = add_lora(tiny_model(tokenizer, seed=0), LoraSpec(r=2, dropout=0.0))
    assert output_head(student) is not None and not output_head(student).weight.requires_grad
    live = LiveTeacher(tiny_model(tokenizer, seed=1))
    cached = CachedSparseTeacher(live, top_k=7, vocab_size=len(tokenizer))
    batch = toy_batches(tokenizer)[0]
    for teacher in (live, cached):
        assert_same_step(tokenizer, Method("fkd", GoldSequences(), ForwardKL(), ce_weight=1.0), student, teacher,
                         batch)


GEMMA2_SOFTCAPPED = dict(TINY_LLAMA, head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8)


@pytest.mark.parametrize("family", ["t5", "gemma2"])
def test_models_whose_logits_are_not_the_plain_projection_take_the_unfused_path(tokenizer, family):
    """T5 (an encoder-decoder) and Gemma 2 (its logits soft-capped after the projection) have no
    plain output head: their loss is taken on their own logits, so a tight cap still shows in it."""
    config = GEMMA2_SOFTCAPPED if family == "gemma2" else {}
    student, teacher = (tiny_model(tokenizer, family, seed=seed, **config) for seed in (0, 1))
    assert output_head(student) is None
    batch, vocab = toy_batches(tokenizer)[0], len(tokenizer)
    out = micro_batch_loss(Method("fkd", GoldSequences(), ForwardKL()), student, LiveTeacher(teacher), batch, batch,
                           vocab)
    positions = target_positions(batch.target_mask)
    logits = take_positions(target_logits(student, batch, vocab), positions)
    with torch.no_grad():
        teacher_logits = take_positions(target_logits(teacher, batch, vocab), positions)
    if family == "gemma2":
        assert logits.abs().max() <= 0.5  # the cap is in the model's logits
    ce = torch.nn.functional.cross_entropy(logits, batch.target_ids.flatten()[positions], reduction="sum")
    torch.testing.assert_close(out.terms["ce"].total, ce.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["kd_fkl"].total, ForwardKL()(logits, teacher_logits).sum().detach(),
                               rtol=1e-5, atol=1e-6)


def test_live_teacher_head_inputs_project_to_its_logits(tokenizer):
    model = tiny_model(tokenizer, seed=1, pad_multiple=64)
    teacher, batch, vocab = LiveTeacher(model), toy_batches(tokenizer)[0], len(tokenizer)
    positions = target_positions(batch.target_mask)
    inputs = teacher.at_positions(batch, vocab, positions, head_inputs=True)
    assert isinstance(inputs, HeadInputs) and not inputs.hidden.requires_grad
    logits = torch.nn.functional.linear(inputs.hidden, inputs.head.weight[:vocab])
    expected = take_positions(target_logits(model, batch, vocab), positions)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher.at_positions(batch, vocab, positions), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(expected, target_logits(model, batch, vocab)[batch.target_mask.bool()])


def test_a_training_step_updates_the_same_with_and_without_the_fused_head(tokenizer, tmp_path):
    batch = toy_batches(tokenizer)[0]
    students = []
    for fused in (True, False):
        student, teacher = tiny_model(tokenizer, seed=0), tiny_model(tokenizer, seed=1)
        options = LoopOptions(grad_clip=1.0, warmup_steps=1, min_lr_ratio=1.0, fused_head=fused, micro_batch_size=3)
        module = DistillationModule(student, Method("gkd", GoldSequences(), GeneralizedJSD(beta=0.5), ce_weight=0.2),
                                    tokenizer, len(tokenizer), partial(torch.optim.AdamW, lr=1e-2), options, teacher)
        cpu_trainer(tmp_path / str(fused), max_steps=2).fit(module, train_dataloaders=loader([batch, batch]))
        students.append(copy.deepcopy(student.state_dict()))
    before = tiny_model(tokenizer, seed=0).state_dict()
    # atol 5e-6: AdamW divides a gradient by its own size, so the rounding of near-zero gradients
    # (the two paths project the head in another order) moves an update by ~1e-6, where a gradient
    # of the wrong direction moves it by ~lr = 1e-2. The gradients themselves are compared at 1e-6
    # in the tests above.
    for name, tensor in students[1].items():
        torch.testing.assert_close(students[0][name], tensor, rtol=1e-5, atol=5e-6, msg=name)
    assert any(not torch.equal(t, before[n]) for n, t in students[0].items())


def test_bf16_head_gradients_add_up_in_float32_over_many_chunks():
    """A bf16 head's weight gradient summed over 64 chunks stays as close to the float64 value as
    one autograd pass over full bf16 logits gets."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(256, 16, generator=g)
    weight = torch.randn(64, 16, generator=g) / 4
    targets = torch.randint(0, 64, (256,), generator=g)

    def weight_grad(dtype, fused, chunk=4):
        hidden, w = h.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        if fused:
            loss, _ = fused_head_loss(hidden, OutputHead(w), 64, ce_targets=targets, ce_scale=1.0, chunk_size=chunk)
        else:
            loss = torch.nn.functional.cross_entropy((hidden @ w.T).float(), targets, reduction="sum")
        loss.backward()
        return w.grad.double()

    exact = weight_grad(torch.float64, fused=False)
    error = (weight_grad(torch.bfloat16, fused=True) - exact).norm() / exact.norm()
    autograd_error = (weight_grad(torch.bfloat16, fused=False) - exact).norm() / exact.norm()
    assert error <= 1.5 * autograd_error + 1e-3
