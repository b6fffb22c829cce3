"""One chunking wrapper for every divergence: bounded memory in the forward *and* backward pass.

Applying a divergence to all N positions at once keeps several [N, V] fp32 tensors alive for the
backward pass. Here the positions are processed in chunks; each chunk's gradient with respect to
the student logits is computed right away (autograd on the chunk alone) and written into one
gradient buffer, then the chunk's graph is freed. So at any time at most one chunk x vocabulary of
fp32 intermediates exists, whatever N is; the backward pass only scales the stored gradient.

This relies on each position's value depending only on its own row of logits, which holds for
every token-level divergence. The teacher is treated as a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PerToken = Callable[..., torch.Tensor]  # (student [n, V], *teacher rows) -> [n]


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: tuple[torch.Tensor, ...], fn: PerToken,
                chunk_size: int) -> torch.Tensor:
        n = student.shape[0]
        values = torch.empty(n, dtype=torch.float32, device=student.device)
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(student) if needs_grad else None  # [N, V], the input's dtype
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            part = student[start:stop].detach().requires_grad_(needs_grad)
            with torch.enable_grad():
                out = fn(part, *(t[start:stop].detach() for t in teacher))  # [c]
                if needs_grad:
                    (grad[start:stop],) = torch.autograd.grad(out.sum(), part)
            values[start:stop] = out.detach()
        ctx.save_for_backward(grad)
        return values

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor):
        (grad,) = ctx.saved_tensors
        # In place: the buffer is used once, and a second [N, V] tensor would double the peak.
        return grad.mul_(grad_values.unsqueeze(-1).to(grad.dtype)), None, None, None


CHUNK_ELEMENTS = 2**24  # default chunk: 16M logits (64 MB per fp32 tensor) whatever the vocabulary


def chunked_divergence(fn: PerToken, student_logits: torch.Tensor, teacher: torch.Tensor | tuple[torch.Tensor, ...],
                       chunk_size: int | None = None) -> torch.Tensor:
    """Apply `fn` to `chunk_size` positions at a time: [N, V] and teacher rows -> [N] fp32.

    `teacher` is dense logits [N, V] or a tuple of per-position tensors (e.g. top-k ids and
    log-probabilities); each is sliced by rows alongside the student. Exact for any chunk size;
    None picks `CHUNK_ELEMENTS / V` positions, so the memory bound does not depend on V.
    """
    teacher = teacher if isinstance(teacher, tuple) else (teacher,)
    if len(teacher) == 1 and student_logits.shape != teacher[0].shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher[0].shape)} must have the same shape (slice padded vocabularies first)")
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(1, student_logits.shape[-1]))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if student_logits.shape[0] == 0:  # all positions masked: an exact 0 that keeps the graph
        return student_logits.sum(-1).float() * 0
    return _ChunkedDivergence.apply(student_logits, teacher, fn, chunk_size)
