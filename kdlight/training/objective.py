"""The loss of one (micro-)batch: each term summed over its target tokens, with its weight.

The loop divides each sum by the global number of target tokens of the optimisation step (all
micro-batches, all ranks), so gradient accumulation and DDP give the update of one big batch.
Two terms exist:
- `ce`: cross-entropy on the gold targets (`method.ce_on: gold`) or on the source's sequences
  (`sequences`, e.g. SeqKD's CE on the teacher's outputs); unlabeled rows have no gold tokens;
- `kd_<divergence>`: the divergence between student and teacher on the source's sequences; the
  teacher gives dense logits or sparse top-k log-probabilities, and the divergence takes either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from kdlight.data.batch import Batch
from kdlight.losses import masked_token_sum, select_positions, token_cross_entropy
from kdlight.losses.sparse import SparseTargets
from kdlight.methods.base import Method
from kdlight.models.lm import target_logits
from kdlight.training.teacher import Teacher


@dataclass
class LossTerm:
    """One term of the loss: its sum over target tokens, its weight, and which batch's target
    tokens it is summed over (`gold` or `sequences`: what it must be divided by)."""

    total: torch.Tensor
    weight: float
    over: str


def loss_terms(method: Method, student: PreTrainedModel, teacher: Teacher | None, gold: Batch, sequences: Batch,
               vocab_size: int) -> dict[str, LossTerm]:
    """Each term of `method`'s loss on one batch (`sequences` is what its source made of `gold`)."""
    terms: dict[str, LossTerm] = {}
    same = sequences is gold
    ce_batch = sequences if method.ce_on == "sequences" else gold
    ce_on_seq = same or ce_batch is sequences  # then one student forward serves both terms
    seq_logits = None
    if method.divergence is not None or (method.ce_weight > 0 and ce_on_seq):
        seq_logits = target_logits(student, sequences, vocab_size)  # [b, T, V]
    if method.ce_weight > 0:
        logits = seq_logits if ce_on_seq else target_logits(student, gold, vocab_size)
        mask = ce_batch.target_mask.bool()
        ce = token_cross_entropy(select_positions(logits, mask), ce_batch.target_ids[mask])
        terms["ce"] = LossTerm(masked_token_sum(ce), method.ce_weight, "sequences" if ce_batch is sequences else "gold")
    if method.divergence is not None:
        if teacher is None:
            raise ValueError(f"method '{method.name}' needs a teacher")
        targets = teacher.distributions(sequences, vocab_size)
        selected = targets.select(sequences.target_mask) if isinstance(targets, SparseTargets) \
            else select_positions(targets, sequences.target_mask)
        per_token = method.divergence(select_positions(seq_logits, sequences.target_mask), selected)  # [N]
        terms[f"kd_{method.divergence.name}"] = LossTerm(masked_token_sum(per_token), method.kd_weight, "sequences")
    return terms
