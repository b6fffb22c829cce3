"""One chunking wrapper for every divergence: bounded memory in the forward *and* backward pass.

Applying a divergence to all N positions at once keeps several [N, V] fp32 tensors alive. Here the
positions are processed in chunks; each chunk's value and its gradient with respect to the student
logits come from the divergence's closed form (`kdlight.losses.divergences`, `<name>_and_grad`)
and the gradient is written into one buffer, so at any time at most one chunk x vocabulary of fp32
intermediates exists, whatever N is; the backward pass only scales the stored gradient.

This relies on each position's value depending only on its own row of logits, which holds for
every token-level divergence. The teacher is treated as a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (student [n, V], *teacher rows, need_grad=bool) -> ([n] fp32 values, [n, V] gradient or None)
PerToken = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: tuple[torch.Tensor, ...], fn: PerToken,
                chunk_size: int) -> torch.Tensor:
        n = student.shape[0]
        values = torch.empty(n, dtype=torch.float32, device=student.device)
        needs_grad = ctx.needs_input_grad[0]
        if n <= chunk_size:  # one chunk: its gradient is the buffer
            values, grad = fn(student.detach(), *(t.detach() for t in teacher), need_grad=needs_grad)
            grad = grad.to(student.dtype) if needs_grad else None
            ctx.save_for_backward(grad)
            return values
        grad = torch.empty_like(student) if needs_grad else None  # [N, V], the input's dtype
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            out, part_grad = fn(student[start:stop].detach(), *(t[start:stop].detach() for t in teacher),
                                need_grad=needs_grad)
            values[start:stop] = out
            if needs_grad:
                grad[start:stop] = part_grad
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

    `fn` returns a chunk's values and their gradient with respect to its student rows (None when
    `need_grad` is False). `teacher` is dense logits [N, V] or a tuple of per-position tensors
    (e.g. top-k ids and log-probabilities); each is sliced by rows alongside the student. Exact for any chunk size;
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
