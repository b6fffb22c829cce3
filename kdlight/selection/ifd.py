"""Instruction-following difficulty (IFD, Li et al., NAACL 2024 "From Quantity to Quality"), as
BalDistill ranks a head domain's pool with it (Zhou et al. 2024).

For an input x and the student's own greedy output ŷ:

    IFD(x) = PPL(ŷ | x) / PPL(ŷ)

the perplexity of ŷ given the prompt over its perplexity with no prompt. A low IFD means the prompt
explains the output well (the student already follows it); a high IFD means the prompt helps
little: an example the student has not learned to follow yet, which selection prefers. Perplexities
are over ŷ's tokens, EOS included; "no prompt" is the model's start token alone (BOS, or EOS for a
tokenizer without one, which is also what an encoder-decoder's empty input is).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from kdlight.data.batch import Batch, collate
from kdlight.models.decoding import Decoding, generate
from kdlight.models.lm import target_logits


@torch.no_grad()
def mean_nll(model: PreTrainedModel, batch: Batch, vocab_size: int) -> list[float]:
    """Each row's mean negative log-likelihood of its target tokens."""
    logits = target_logits(model, batch, vocab_size).float()
    nll = F.cross_entropy(logits.transpose(1, 2), batch.target_ids, reduction="none") * batch.target_mask
    return (nll.sum(1) / batch.target_mask.sum(1).clamp(min=1)).tolist()


@torch.no_grad()
def ifd_of_outputs(model: PreTrainedModel, prompts: list[list[int]], outputs: list[list[int]], start_id: int,
                   pad_id: int, vocab_size: int) -> list[float]:
    """IFD of given outputs: exp(mean NLL of the output given its prompt - mean NLL given only
    `start_id`)."""
    index = list(range(len(prompts)))
    device = next(model.parameters()).device
    conditioned = collate(prompts, outputs, index, pad_id).to(device)
    alone = collate([[start_id]] * len(prompts), outputs, index, pad_id).to(device)
    return [math.exp(c - a) for c, a in zip(mean_nll(model, conditioned, vocab_size), mean_nll(model, alone, vocab_size))]


@torch.no_grad()
def ifd_scores(model: PreTrainedModel, batches: Iterable[Batch], max_new_tokens: int, start_id: int, eos_id: int,
               pad_id: int, vocab_size: int) -> dict[int, float]:
    """IFD of every example in `batches` (by `batch.index`) on the model's own greedy output."""
    model.eval()
    device = next(model.parameters()).device
    scores: dict[int, float] = {}
    greedy = Decoding(max_new_tokens=max_new_tokens)
    for batch in batches:
        batch = batch.to(device)
        outputs = [o or [eos_id] for o in generate(model, batch, greedy, eos_id, pad_id, vocab_size)]
        prompts = [row[mask.bool()].tolist() for row, mask in zip(batch.prompt_ids, batch.prompt_mask)]
        values = ifd_of_outputs(model, prompts, outputs, start_id, pad_id, vocab_size)
        scores.update(zip(batch.index.tolist(), values))
    return scores

