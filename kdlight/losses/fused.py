"""The output head fused into the loss: `[N, V]` logits never exist at once.

A step's losses need the student's logits only at target positions, and only row by row. Here the
student's last hidden states `[N, H]` (and the teacher's, when it is a live model with a plain
head) go through the output projection `chunk_size` positions at a time inside the loss; each
chunk's cross-entropy and divergence give their value and closed-form gradient with respect to the
chunk's logits (`kdlight.losses.divergences`), which the projection turns into gradients for the
hidden states and the head's weight right away. Peak extra memory is a few chunk x V fp32 tensors
plus the `[V, H]` weight gradient any implementation has, instead of several `[N, V]` tensors kept
for the backward pass. The idea is Liger-Kernel's fused linear cross-entropy / JSD (Hsu et al.,
2024), here in plain PyTorch and for every kdlight divergence.

The terms are weighted when the loss is built (`ce_scale`, `kd_scale`: each term's weight over
its global token count), so the function returns one scalar to backpropagate plus each term's
plain sum for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdlight.losses.chunked import CHUNK_ELEMENTS
from kdlight.losses.objectives import Divergence
from kdlight.losses.sparse import SparseTargets
from kdlight.models.lm import OutputHead


@dataclass
class HeadInputs:
    """A model's hidden states at the selected positions and its output head: logits = hidden @ W[:V].T + b[:V]."""

    hidden: torch.Tensor  # [N, H]
    head: OutputHead


Teacher = HeadInputs | torch.Tensor | SparseTargets  # hidden + head, dense logits [N, V], or top-k rows [N, k]


def cross_entropy_and_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CE per row in fp32 and its gradient softmax - onehot: [n, V], [n] -> [n], [n, V]."""
    log_q = torch.log_softmax(logits.float(), -1)
    rows = torch.arange(len(targets), device=logits.device)
    value = -log_q[rows, targets]
    grad = log_q.exp_()
    grad[rows, targets] -= 1
    return value, grad


class _FusedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, vocab_size, ce_targets, ce_scale, divergence, teacher, kd_scale,
                chunk_size):
        n = hidden.shape[0]
        n_kd = _teacher_len(teacher) if divergence is not None else 0  # the divergence: rows [0, n_kd)
        ce_from = n - len(ce_targets) if ce_targets is not None else n  # cross-entropy: rows [ce_from, n)
        weight_v = weight[:vocab_size]
        bias_v = bias[:vocab_size] if bias is not None else None
        need = ctx.needs_input_grad
        grad_hidden = torch.zeros_like(hidden) if need[0] else None
        # The head's gradients add up over chunks: in fp32, whatever the weights' dtype (bf16 sums of
        # many chunks lose ~1%), cast once at the end.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
        sums = torch.zeros(2, dtype=torch.float32, device=hidden.device)  # CE, divergence
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            h = hidden[start:stop]
            logits = torch.nn.functional.linear(h, weight_v, bias_v)  # [c, V]
            grad = None
            if max(start, ce_from) < stop:
                first = max(start, ce_from)
                value, ce_grad = cross_entropy_and_grad(logits[first - start:],
                                                        ce_targets[first - ce_from:stop - ce_from])
                sums[0] += value.sum()
                grad = _add_rows(grad, ce_grad.mul_(ce_scale), first - start, logits)
            if start < n_kd:
                last = min(stop, n_kd)
                value, kd_grad = divergence.value_and_grad_on(logits[:last - start],
                                                              _teacher_rows(teacher, start, last, vocab_size))
                sums[1] += value.sum()
                grad = _add_rows(grad, kd_grad.float().mul_(kd_scale), 0, logits)
            grad = grad.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad @ weight_v
            if grad_weight is not None:
                grad_weight[:vocab_size].addmm_(grad.T.float(), h.float())
            if grad_bias is not None:
                grad_bias[:vocab_size] += grad.float().sum(0)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        loss = sums[0] * ce_scale + sums[1] * kd_scale
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        grads = [g.mul_(grad_loss.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None, None, None, None, None, None)


def _add_rows(grad: torch.Tensor | None, part: torch.Tensor, offset: int, logits: torch.Tensor) -> torch.Tensor:
    """A term's gradient for rows [offset, offset + len(part)) of the chunk, added to the chunk's
    gradient so far (None: no term yet; a term covering the whole chunk is used as it is)."""
    if grad is None:
        if offset == 0 and len(part) == len(logits):
            return part
        grad = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    grad[offset:offset + len(part)] += part
    return grad


def _teacher_len(teacher: Teacher) -> int:
    if isinstance(teacher, HeadInputs):
        return teacher.hidden.shape[0]
    if isinstance(teacher, SparseTargets):
        return teacher.ids.shape[0]
    return teacher.shape[0]


def _teacher_rows(teacher: Teacher, start: int, stop: int, vocab_size: int):
    if isinstance(teacher, HeadInputs):
        with torch.no_grad():
            bias = teacher.head.bias[:vocab_size] if teacher.head.bias is not None else None
            return torch.nn.functional.linear(teacher.hidden[start:stop], teacher.head.weight[:vocab_size], bias)
    if isinstance(teacher, SparseTargets):
        return teacher.rows(start, stop)
    return teacher[start:stop]


def fused_head_loss(hidden: torch.Tensor, head: OutputHead, vocab_size: int, *, ce_targets: torch.Tensor | None = None,
                    ce_scale: float = 0.0, divergence: Divergence | None = None, teacher: Teacher | None = None,
                    kd_scale: float = 0.0, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ce_scale·Σ CE + kd_scale·Σ divergence over N positions, without forming `[N, V]` logits.

    The two terms may cover different rows: the divergence the first rows (as many as `teacher`
    gives), the cross-entropy the last (as many as `ce_targets`). All rows for both when the CE
    reads the sequences the divergence is taken on; the hidden states of two batches stacked
    (divergence rows, then CE rows) when it reads another, e.g. gold: one call, so one `[V, H]`
    weight gradient is held instead of two.

    Args:
        hidden: the student's last hidden states at the positions, [N, H].
        head: the student's output head (its weight gets a gradient when it requires one).
        vocab_size: the vocabulary teacher and student share (rows beyond it are padding).
        ce_targets: [n_ce <= N] token ids of the last n_ce rows for a cross-entropy term, or None.
        divergence: the divergence to the teacher, or None; `teacher` gives the teacher at the first
            n_kd <= N rows: its hidden states and head (a live model), dense logits [n_kd, V], or
            top-k rows.
        chunk_size: positions per chunk; None: 2^24 / V (the memory bound of the unfused divergences).
    Returns:
        the loss (a scalar to backpropagate) and the detached sums [Σ CE, Σ divergence].
    """
    if ce_targets is None and divergence is None:
        raise ValueError("fused_head_loss needs a cross-entropy term, a divergence, or both")
    if divergence is not None and teacher is None:
        raise ValueError("fused_head_loss: a divergence needs the teacher at the same positions")
    n, n_ce = hidden.shape[0], len(ce_targets) if ce_targets is not None else 0
    n_kd = _teacher_len(teacher) if divergence is not None else 0
    if n_ce > n or n_kd > n or n_ce + n_kd < n:
        raise ValueError(f"fused_head_loss: {n} rows of hidden states, {n_kd} for the divergence (the first) and "
                         f"{n_ce} for the cross-entropy (the last): each term at most all rows, together every row")
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // max(1, vocab_size))
    return _FusedHeadLoss.apply(hidden, head.weight, head.bias, vocab_size, ce_targets, ce_scale, divergence, teacher,
                                kd_scale, chunk)
