"""Divergences and CE against float64 references written independently here."""

from __future__ import annotations

import math

import pytest
import torch

from kdlight.losses import forward_kl, masked_token_sum, reverse_kl, select_positions, token_cross_entropy


def reference_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(p‖q) per row in float64, by the textbook formula with 0·log 0 = 0."""
    p = torch.softmax(p_logits.double() / tau, -1)
    q = torch.softmax(q_logits.double() / tau, -1)
    out = []
    for pr, qr in zip(p, q):
        out.append(sum(float(a) * (math.log(float(a)) - math.log(float(b))) for a, b in zip(pr, qr) if a > 0))
    return torch.tensor(out, dtype=torch.float64) * tau**2


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_kl_directions_match_reference(tau, scale):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(7, 11, generator=g) * scale
    teacher = torch.randn(7, 11, generator=g) * scale
    fkl = forward_kl(student, teacher, tau)
    rkl = reverse_kl(student, teacher, tau)
    assert fkl.dtype == torch.float32 and fkl.shape == (7,)
    torch.testing.assert_close(fkl.double(), reference_kl(teacher, student, tau), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rkl.double(), reference_kl(student, teacher, tau), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fkl, rkl)  # the two directions really differ on these inputs


def test_kl_gradients_match_autograd_of_reference():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(5, 9, generator=g, dtype=torch.float64)
    teacher = torch.randn(5, 9, generator=g, dtype=torch.float64)
    for fn, ref in ((forward_kl, lambda s, t: (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1)),
                    (reverse_kl, lambda s, t: (torch.softmax(s, -1) * (torch.log_softmax(s, -1) - torch.log_softmax(t, -1))).sum(-1))):
        s1 = student.clone().float().requires_grad_()
        fn(s1, teacher.float()).sum().backward()
        s2 = student.clone().requires_grad_()
        ref(s2, teacher).sum().backward()
        torch.testing.assert_close(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-6)


def test_masked_vocabulary_entries_give_finite_values():
    student = torch.randn(3, 6)
    teacher = torch.randn(3, 6)
    teacher[:, 4:] = float("-inf")  # e.g. padded vocabulary rows
    student[:, 5] = float("-inf")
    fkl = forward_kl(student, teacher)
    assert torch.isfinite(fkl).all()
    torch.testing.assert_close(fkl.double(), reference_kl(teacher, student), rtol=1e-4, atol=1e-5)


def test_identical_distributions_give_zero_and_bf16_inputs_are_computed_in_fp32():
    logits = torch.randn(4, 10).to(torch.bfloat16)
    assert torch.allclose(forward_kl(logits, logits), torch.zeros(4), atol=1e-6)
    other = torch.randn(4, 10).to(torch.bfloat16)
    value = reverse_kl(logits, other)
    assert value.dtype == torch.float32 and (value >= 0).all()
    torch.testing.assert_close(value.double(), reference_kl(logits.float(), other.float()), rtol=1e-4, atol=1e-5)


def test_masked_positions_contribute_nothing():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 4, 8, generator=g)
    teacher = torch.randn(2, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    total = masked_token_sum(forward_kl(select_positions(student, mask), select_positions(teacher, mask)))
    # changing masked positions (even to NaN) changes nothing
    student2, teacher2 = student.clone(), teacher.clone()
    student2[mask == 0] = float("nan")
    teacher2[mask == 0] = 1e4
    total2 = masked_token_sum(forward_kl(select_positions(student2, mask), select_positions(teacher2, mask)))
    assert total == total2
    expected = sum(float(reference_kl(teacher[b, t:t + 1], student[b, t:t + 1])) for b, t in [(0, 0), (0, 1), (1, 0)])
    assert float(total) == pytest.approx(expected, rel=1e-4)


def test_all_masked_gives_exact_zero_without_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.long)
    total = masked_token_sum(reverse_kl(select_positions(logits, mask), select_positions(logits.detach(), mask)))
    assert float(total.detach()) == 0.0
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_matches_reference():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 7, generator=g)
    targets = torch.randint(0, 7, (6,), generator=g)
    expected = -torch.log_softmax(logits.double(), -1)[torch.arange(6), targets]
    torch.testing.assert_close(token_cross_entropy(logits, targets).double(), expected, rtol=1e-5, atol=1e-6)
