"""Target positions selected by index, sums over them and token cross-entropy (the divergences: test_divergences.py)."""

from __future__ import annotations

import pytest
import torch

from kdlight.losses import forward_kl, reverse_kl, token_cross_entropy
from kdlight.models.lm import take_positions, target_positions
from tests.test_divergences import ref_fkl


def test_masked_positions_contribute_nothing():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 4, 8, generator=g)
    teacher = torch.randn(2, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    positions = target_positions(mask)
    assert positions.tolist() == [0, 1, 4]  # row-major flat indices into B x T
    total = forward_kl(take_positions(student, positions), take_positions(teacher, positions)).sum()
    # changing masked positions (even to NaN) changes nothing
    student2, teacher2 = student.clone(), teacher.clone()
    student2[mask == 0] = float("nan")
    teacher2[mask == 0] = 1e4
    total2 = forward_kl(take_positions(student2, positions), take_positions(teacher2, positions)).sum()
    assert total == total2
    expected = sum(float(ref_fkl(student[b, t:t + 1], teacher[b, t:t + 1])) for b, t in [(0, 0), (0, 1), (1, 0)])
    assert float(total) == pytest.approx(expected, rel=1e-4)


def test_all_masked_gives_exact_zero_without_nan():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.long)
    positions = target_positions(mask)
    total = reverse_kl(take_positions(logits, positions), take_positions(logits.detach(), positions)).sum()
    assert float(total.detach()) == 0.0
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_matches_reference():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 7, generator=g)
    targets = torch.randint(0, 7, (6,), generator=g)
    expected = -torch.log_softmax(logits.double(), -1)[torch.arange(6), targets]
    torch.testing.assert_close(token_cross_entropy(logits, targets).double(), expected, rtol=1e-5, atol=1e-6)
