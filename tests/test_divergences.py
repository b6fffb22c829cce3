"""The divergence library against float64 references written independently here, and its properties.

Tolerances: fp32 inputs within rtol 1e-4 of the float64 reference; bf16 inputs are compared with the
reference evaluated on the same (bf16-rounded) values, within rtol 1e-3 (the loss itself runs in fp32).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kdlight.losses import (ForwardKL, GeneralizedJSD, JensenShannon, ReverseKL, SkewForwardKL, SkewReverseKL,
                            TotalVariation, forward_kl, generalized_jsd, jensen_shannon,
                            reverse_kl, skew_forward_kl, skew_reverse_kl, total_variation)
from kdlight.losses.sparse import SparseTargets


# --- independent float64 references (probabilities, textbook formulas) --------------------------
def _softmax64(logits, tau):
    return torch.softmax(logits.double() / tau, -1)


def _kl64(a, b):
    """Σ a log(a/b) with 0 log 0 = 0, float64, per row."""
    terms = torch.where(a > 0, a * (torch.log(a) - torch.log(b)), torch.zeros_like(a))
    return terms.sum(-1)


def ref_fkl(s, t, tau=1.0):
    return _kl64(_softmax64(t, tau), _softmax64(s, tau)) * tau**2


def ref_rkl(s, t, tau=1.0):
    return _kl64(_softmax64(s, tau), _softmax64(t, tau)) * tau**2


def ref_gjsd(s, t, beta, tau=1.0):
    p, q = _softmax64(t, tau), _softmax64(s, tau)
    m = beta * p + (1 - beta) * q
    return (beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)) * tau**2


def ref_tvd(s, t, tau=1.0):
    return 0.5 * (_softmax64(t, tau) - _softmax64(s, tau)).abs().sum(-1) * tau**2


def ref_skl(s, t, alpha, tau=1.0):
    p, q = _softmax64(t, tau), _softmax64(s, tau)
    return _kl64(p, alpha * p + (1 - alpha) * q) * tau**2


def ref_srkl(s, t, alpha, tau=1.0):
    p, q = _softmax64(t, tau), _softmax64(s, tau)
    return _kl64(q, alpha * q + (1 - alpha) * p) * tau**2


CASES = [  # (name, kdlight pure function, reference, strategy object)
    ("fkl", forward_kl, ref_fkl, ForwardKL),
    ("rkl", reverse_kl, ref_rkl, ReverseKL),
    ("js", jensen_shannon, lambda s, t, tau=1.0: ref_gjsd(s, t, 0.5, tau), JensenShannon),
    ("gjsd0.2", lambda s, t, tau=1.0: generalized_jsd(s, t, 0.2, tau), lambda s, t, tau=1.0: ref_gjsd(s, t, 0.2, tau),
     lambda **kw: GeneralizedJSD(beta=0.2, **kw)),
    ("tvd", total_variation, ref_tvd, TotalVariation),
    ("skl", lambda s, t, tau=1.0: skew_forward_kl(s, t, 0.1, tau), lambda s, t, tau=1.0: ref_skl(s, t, 0.1, tau),
     lambda **kw: SkewForwardKL(alpha=0.1, **kw)),
    ("srkl", lambda s, t, tau=1.0: skew_reverse_kl(s, t, 0.1, tau), lambda s, t, tau=1.0: ref_srkl(s, t, 0.1, tau),
     lambda **kw: SkewReverseKL(alpha=0.1, **kw)),
]
IDS = [c[0] for c in CASES]


def logits(n=6, v=13, scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("name,fn,ref,_", CASES, ids=IDS)
@pytest.mark.parametrize("scale,tau", [(1.0, 1.0), (40.0, 1.0), (3.0, 2.5)])
def test_matches_float64_reference(name, fn, ref, _, scale, tau):
    s, t = logits(scale=scale, seed=1), logits(scale=scale, seed=2)
    out = fn(s, t, tau) if name in ("fkl", "rkl", "js", "tvd") else fn(s, t, tau=tau)
    assert out.dtype == torch.float32 and out.shape == (6,)
    torch.testing.assert_close(out.double(), ref(s, t, tau), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,fn,ref,_", CASES, ids=IDS)
def test_masked_vocabulary_minus_inf(name, fn, ref, _):
    s, t = logits(seed=3), logits(seed=4)
    t[:, -3:] = -math.inf  # e.g. padded or banned tokens, for the teacher ...
    s[:, -3:] = -math.inf  # ... and the student alike
    s[0, 0] = -math.inf  # and one the student alone rules out
    out = fn(s, t)
    expected = ref(s, t)
    assert torch.isfinite(out[1:]).all()
    torch.testing.assert_close(out[1:].double(), expected[1:], rtol=1e-4, atol=1e-5)
    if name not in ("fkl",):  # FKL is +inf where the teacher has mass the student rules out
        assert torch.isfinite(out[0]) and float(out[0]) == pytest.approx(float(expected[0]), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name,fn,ref,_", CASES, ids=IDS)
def test_bf16_inputs_are_computed_in_fp32(name, fn, ref, _):
    s, t = logits(scale=5, seed=5, dtype=torch.bfloat16), logits(scale=5, seed=6, dtype=torch.bfloat16)
    out = fn(s, t)
    assert out.dtype == torch.float32 and (out >= 0).all()
    torch.testing.assert_close(out.double(), ref(s, t), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name,fn,ref,make", CASES, ids=IDS)
@pytest.mark.parametrize("chunk,tau", [(1, 1.0), (4, 1.0), (512, 1.0), (4, 2.5)])
def test_gradients_match_autograd_of_reference(name, fn, ref, make, chunk, tau):
    s, t = logits(scale=3, seed=7), logits(scale=3, seed=8)
    weights = torch.rand(6, generator=torch.Generator().manual_seed(0))  # a non-uniform upstream gradient
    mine = s.clone().requires_grad_()
    (make(chunk_size=chunk, temperature=tau)(mine, t) * weights).sum().backward()
    reference = s.double().clone().requires_grad_()
    (ref(reference, t, tau) * weights.double()).sum().backward()
    torch.testing.assert_close(mine.grad.double(), reference.grad, rtol=1e-4, atol=1e-6)


# --- properties ---------------------------------------------------------------------------------
rows = st.integers(1, 9)
vocab = st.integers(2, 17)
seeds = st.integers(0, 10_000)
scales = st.sampled_from([0.1, 1.0, 10.0, 60.0])


@settings(max_examples=60, deadline=None)
@given(n=rows, v=vocab, seed=seeds, scale=scales)
def test_non_negative_and_zero_on_equal_inputs(n, v, seed, scale):
    s, t = logits(n, v, scale, seed), logits(n, v, scale, seed + 1)
    for name, fn, _, _ in CASES:
        assert (fn(s, t) >= -1e-6).all(), name
        assert torch.allclose(fn(s, s), torch.zeros(n), atol=1e-6), name


@settings(max_examples=60, deadline=None)
@given(n=rows, v=vocab, seed=seeds, scale=scales)
def test_positive_when_distributions_differ(n, v, seed, scale):
    """'Zero iff equal', up to fp32 resolution: positive wherever p and q measurably differ."""
    s, t = logits(n, v, scale, seed), logits(n, v, scale, seed + 1)
    differ = ref_tvd(s, t) > 1e-3
    assume(bool(differ.any()))
    for name, fn, _, _ in CASES:
        assert (fn(s, t)[differ] > 0).all(), name


@settings(max_examples=60, deadline=None)
@given(n=rows, v=vocab, seed=seeds, scale=scales)
def test_js_symmetric_and_bounded_tvd_in_unit_interval(n, v, seed, scale):
    s, t = logits(n, v, scale, seed), logits(n, v, scale, seed + 1)
    js = jensen_shannon(s, t)
    torch.testing.assert_close(js, jensen_shannon(t, s), rtol=1e-4, atol=1e-6)
    assert (js <= math.log(2) + 1e-6).all()
    tvd = total_variation(s, t)
    assert ((tvd >= 0) & (tvd <= 1 + 1e-6)).all()


@settings(max_examples=60, deadline=None)
@given(n=rows, v=vocab, seed=seeds, scale=scales, alpha=st.floats(0.0, 1.0))
def test_skew_kl_between_zero_and_scaled_plain_kl(n, v, seed, scale, alpha):
    s, t = logits(n, v, scale, seed), logits(n, v, scale, seed + 1)
    for skew, plain in ((skew_forward_kl, forward_kl), (skew_reverse_kl, reverse_kl)):
        value, full = skew(s, t, alpha), plain(s, t)
        assert (value <= (1 - alpha) * full + 1e-5 * (1 + full)).all()
        torch.testing.assert_close(skew(s, t, 0.0), full, rtol=1e-4, atol=1e-6)
        assert torch.allclose(skew(s, t, 1.0), torch.zeros(n), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 23), v=vocab, seed=seeds, chunk=st.integers(1, 30))
def test_chunked_equals_unchunked_for_any_chunk_size(n, v, seed, chunk):
    s, t = logits(n, v, 3.0, seed), logits(n, v, 3.0, seed + 1)
    for name, fn, _, make in CASES:
        whole, parts = s.clone().requires_grad_(), s.clone().requires_grad_()
        full = make(chunk_size=n)(whole, t)
        split = make(chunk_size=chunk)(parts, t)
        torch.testing.assert_close(split, full, rtol=1e-6, atol=1e-7)
        full.sum().backward()
        split.sum().backward()
        torch.testing.assert_close(parts.grad, whole.grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,fn,ref,make", CASES, ids=IDS)
def test_all_masked_input_gives_zero_without_nan(name, fn, ref, make):
    s = torch.randn(0, 9, requires_grad=True)
    out = make()(s, torch.randn(0, 9))
    assert out.shape == (0,) and float(out.sum().detach()) == 0.0
    out.sum().backward()
    assert s.grad is not None and not torch.isnan(s.grad).any()


# --- generalised JSD: end values ----------------------------------------------------------------
@pytest.mark.parametrize("beta,pointer", [(0.0, "use method fkd"), (1.0, "use method rkd"), (-0.1, "fkd"), (1.5, "rkd")])
def test_gjsd_refuses_end_values_and_points_to_fkd_rkd(beta, pointer):
    with pytest.raises(ValueError, match=pointer):
        generalized_jsd(logits(), logits(seed=1), beta)
    with pytest.raises(ValueError, match=pointer):
        GeneralizedJSD(beta=beta)


def test_gjsd_approaches_fkl_and_rkl_at_the_ends():
    """Documented direction: GJSD(β)/β -> FKL as β -> 0, GJSD(β)/(1-β) -> RKL as β -> 1."""
    s, t = logits(seed=11), logits(seed=12)
    eps = 1e-4
    torch.testing.assert_close(generalized_jsd(s, t, eps) / eps, forward_kl(s, t), rtol=2e-3, atol=1e-4)
    torch.testing.assert_close(generalized_jsd(s, t, 1 - eps) / eps, reverse_kl(s, t), rtol=2e-3, atol=1e-4)


# --- sparse (top-k) teacher ---------------------------------------------------------------------
def top_k(teacher_logits, k):
    values = torch.log_softmax(teacher_logits.float(), -1).topk(k, -1)
    return SparseTargets(values.indices, values.values)


@pytest.mark.parametrize("missing_mass", ["renormalize", "rest"])
@pytest.mark.parametrize("make", [ForwardKL, ReverseKL, TotalVariation], ids=["fkl", "rkl", "tvd"])
def test_sparse_teacher_with_full_support_equals_dense(missing_mass, make):
    s, t = logits(v=11, seed=13), logits(v=11, seed=14)
    dense = make()(s, t)
    torch.testing.assert_close(make(missing_mass=missing_mass)(s, top_k(t, 11)), dense, rtol=1e-5, atol=1e-6)


def test_sparse_teacher_renormalize_and_rest_semantics():
    s, t = logits(n=4, v=20, scale=2, seed=15), logits(n=4, v=20, scale=2, seed=16)
    sparse = top_k(t, 5)
    p, q = _softmax64(t, 1.0), _softmax64(s, 1.0)
    p_k, q_k = p.gather(-1, sparse.ids), q.gather(-1, sparse.ids)
    renorm = _kl64(p_k / p_k.sum(-1, keepdim=True), q_k / q_k.sum(-1, keepdim=True))
    rest = _kl64(torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], -1), torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1))
    torch.testing.assert_close(ForwardKL(missing_mass="renormalize")(s, sparse).double(), renorm, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ForwardKL(missing_mass="rest")(s, sparse).double(), rest, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="missing_mass must be one of"):
        ForwardKL(missing_mass="drop")


def test_padded_teacher_vocabulary_is_sliced_to_the_shared_size(tokenizer):
    """A teacher with extra padding rows gives the same loss as one without, once sliced."""
    from kdlight.models.lm import target_logits
    from tests.helpers import tiny_model, toy_batches

    teacher = tiny_model(tokenizer, "llama", pad_multiple=64).eval()
    batch = toy_batches(tokenizer)[0]
    full = target_logits(teacher, batch)
    assert full.shape[-1] > len(tokenizer)
    sliced = target_logits(teacher, batch, len(tokenizer))
    assert sliced.shape[-1] == len(tokenizer)
    torch.testing.assert_close(sliced, full[..., : len(tokenizer)])
    student = torch.randn(*sliced.shape[:2], len(tokenizer))
    with pytest.raises(ValueError, match="must have the same shape"):
        ForwardKL()(student.flatten(0, 1), full.flatten(0, 1))


# --- cross-check with a peer (TRL's GKD loss), when installed --------------------------------------
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_agrees_with_trl(beta):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer", reason="trl not installed")
    s, t = logits(n=8, v=31, scale=3, seed=17), logits(n=8, v=31, scale=3, seed=18)
    labels = torch.zeros(2, 4, dtype=torch.long)
    labels[1, 3] = -100  # one masked position
    mask = labels != -100
    theirs = gkd.GKDTrainer.generalized_jsd_loss(s.view(2, 4, 31), t.view(2, 4, 31), labels=labels, beta=beta,
                                                 reduction="sum")
    ours = GeneralizedJSD(beta=beta)(s.view(2, 4, 31)[mask], t.view(2, 4, 31)[mask]).sum()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    # and at TRL's end values, which it defines as FKL (β=0) and RKL (β=1)
    for end, ours_end in ((0.0, forward_kl), (1.0, reverse_kl)):
        theirs_end = gkd.GKDTrainer.generalized_jsd_loss(s.view(2, 4, 31), t.view(2, 4, 31), labels=labels,
                                                         beta=end, reduction="sum")
        assert float(ours_end(s.view(2, 4, 31)[mask], t.view(2, 4, 31)[mask]).sum()) == pytest.approx(float(theirs_end), rel=1e-5)
