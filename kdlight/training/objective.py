"""The loss of one (micro-)batch: each term summed over its target tokens, weighted, and divided by
its global token count.

The loop passes the global number of target tokens of the optimisation step (all micro-batches,
all ranks) for each kind of batch, so gradient accumulation and DDP give the update of one big
batch. Two terms exist:
- `ce`: cross-entropy on the gold targets (`method.ce_on: gold`), on the source's sequences
  (`sequences`, e.g. SeqKD's CE on the teacher's outputs), or with the gold tokens as labels and the
  source's sequences as inputs (`gold_on_sequences`, for sources that rewrite gold in place, as
  KID does: one student pass for both terms); unlabeled rows have no gold tokens;
- `kd_<divergence>`: the divergence between student and teacher on the source's sequences; the
  teacher gives dense logits or sparse top-k log-probabilities, and the divergence takes either.

Two ways to compute them, with the same values and gradients:
- fused (`fused=True`, a student with a plain output head, `kdlight.models.lm.output_head`): the
  student's hidden states at the target positions go through its output projection chunk by chunk
  inside the loss (`kdlight.losses.fused`), and so do a live teacher's; `[N, V]` logits never exist;
- unfused: the models' logits at the target positions, then the chunked divergence (any model,
  e.g. T5).
Positions are selected by index (`target_positions`), computed once per batch and shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from kdlight.data.batch import Batch
from kdlight.losses import token_cross_entropy
from kdlight.losses.fused import fused_head_loss
from kdlight.methods.base import Method
from kdlight.models.lm import output_head, take_positions, target_hidden, target_logits, target_positions
from kdlight.training.teacher import Teacher


@dataclass
class LossTerm:
    """One term of the loss: its sum over target tokens (detached, for logging), its weight, and
    which batch's target tokens it is summed over (`gold` or `sequences`: what it is divided by)."""

    total: torch.Tensor
    weight: float
    over: str


@dataclass
class MicroBatchLoss:
    """`loss` to backpropagate: Σ over terms of weight · sum / global count; `terms` for logging."""

    loss: torch.Tensor
    terms: dict[str, LossTerm] = field(default_factory=dict)

    def share(self, name: str, counts: dict[str, float]) -> float:
        """A term's sum over its global count (what is logged as `train/<name>`)."""
        term = self.terms[name]
        return float(term.total) / counts[term.over]


def micro_batch_loss(method: Method, student: PreTrainedModel, teacher: Teacher | None, gold: Batch, sequences: Batch,
                     vocab_size: int, counts: dict[str, float] | None = None, fused: bool = True) -> MicroBatchLoss:
    """`method`'s loss on one batch (`sequences` is what its source made of `gold`).

    Args:
        counts: the global number of target tokens of the step per kind of batch (`gold`,
            `sequences`); None: 1 each (the loss is then the weighted sums).
        fused: project the hidden states inside the loss when the student allows it.
    """
    counts = counts or {"gold": 1.0, "sequences": 1.0}
    if method.divergence is not None and teacher is None:
        raise ValueError(f"method '{method.name}' needs a teacher")
    ce_over = "sequences" if method.ce_on == "sequences" or sequences is gold else "gold"
    # The batch the student reads for CE, and its labels: gold on gold, the source's sequences on
    # themselves, or gold labels on the source's sequences (`gold_on_sequences`: one student pass).
    ce_batch = sequences if ce_over == "sequences" or method.ce_on == "gold_on_sequences" else gold
    ce_labels = ce_batch.target_ids
    if method.ce_on == "gold_on_sequences" and sequences is not gold:
        if not torch.equal(sequences.target_mask, gold.target_mask):  # the source declared it (Method checks)
            raise ValueError(f"method '{method.name}': ce_on=gold_on_sequences needs the source's sequences to "
                             f"align with the gold targets position for position, but {type(method.source).__name__}"
                             " changed their lengths")
        ce_labels = gold.target_ids
    ce_scale = method.ce_weight / counts[ce_over]
    kd_scale = method.kd_weight / counts["sequences"]
    kd_name = f"kd_{method.divergence.name}" if method.divergence is not None else None
    head = output_head(student) if fused else None
    out = MicroBatchLoss(torch.zeros((), device=gold.target_ids.device))

    def add(name: str, loss: torch.Tensor, total: torch.Tensor, weight: float, over: str) -> None:
        out.loss = out.loss + loss
        out.terms[name] = LossTerm(total.detach(), weight, over)

    kd_positions = target_positions(sequences.target_mask) if method.divergence is not None else None
    if head is not None:
        # One fused call for both terms, so one [V, H] head gradient is held: CE on the divergence's
        # rows when it reads the same sequences, else on the stacked hidden states of its own batch.
        ce_here = method.ce_weight > 0 and ce_batch is sequences and kd_name is not None
        hidden, ce_targets = [], None
        if kd_name is not None:
            hidden.append(target_hidden(student, sequences, kd_positions))
            ce_targets = ce_labels.flatten()[kd_positions] if ce_here else None
        if method.ce_weight > 0 and not ce_here:
            positions = target_positions(ce_batch.target_mask)
            hidden.append(target_hidden(student, ce_batch, positions))
            ce_targets = ce_labels.flatten()[positions]
        at_teacher = teacher.at_positions(sequences, vocab_size, kd_positions, True) if kd_name is not None else None
        loss, sums = fused_head_loss(torch.cat(hidden) if len(hidden) > 1 else hidden[0], head, vocab_size,
                                     ce_targets=ce_targets, ce_scale=ce_scale, divergence=method.divergence,
                                     teacher=at_teacher, kd_scale=kd_scale)
        out.loss = loss
        if ce_targets is not None:
            out.terms["ce"] = LossTerm(sums[0], method.ce_weight, ce_over)
        if kd_name is not None:
            out.terms[kd_name] = LossTerm(sums[1], method.kd_weight, "sequences")
        return _ordered(out)

    seq_logits = None
    if kd_name is not None or (method.ce_weight > 0 and ce_batch is sequences):
        seq_logits = target_logits(student, sequences, vocab_size)  # [b, T, V]
    if method.ce_weight > 0:
        logits = seq_logits if ce_batch is sequences else target_logits(student, gold, vocab_size)
        positions = target_positions(ce_batch.target_mask)
        total = token_cross_entropy(take_positions(logits, positions), ce_labels.flatten()[positions]).sum()
        add("ce", total * ce_scale, total, method.ce_weight, ce_over)
    if kd_name is not None:
        total = method.divergence(take_positions(seq_logits, kd_positions),
                                  teacher.at_positions(sequences, vocab_size, kd_positions)).sum()  # [N] -> sum
        add(kd_name, total * kd_scale, total, method.kd_weight, "sequences")
    return _ordered(out)


def _ordered(out: MicroBatchLoss) -> MicroBatchLoss:
    """`ce` first, then the divergence: the order every logger and report shows."""
    out.terms = dict(sorted(out.terms.items(), key=lambda item: item[0] != "ce"))
    return out
