"""The batch layout every method and model shares: left-padded prompts, right-padded targets.

Keeping prompt and target apart (instead of one packed sequence) lets one batch feed a causal LM
(prompt ⊕ target, where the logits predicting target token j sit at a fixed offset) and a seq2seq
LM (prompt to the encoder, target to the decoder) alike, and lets a method swap the target (a
teacher output, a student sample, a rewritten gold) without touching the prompt.

An unlabeled input (no gold target) is a row whose target is empty (`target_mask` all zero) and
whose `labeled` flag is False: no gold loss can reach it, and a source that writes targets for any
prompt (teacher outputs, student samples) fills it in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """Token ids for B examples.

    Attributes:
        prompt_ids: [B, P] left-padded prompt tokens.
        prompt_mask: [B, P] 1 for real prompt tokens.
        target_ids: [B, T] right-padded target tokens, ending with EOS.
        target_mask: [B, T] 1 for target tokens that carry loss.
        index: [B] position of each example in its dataset (to join predictions back).
        labeled: [B] bool, False for an unlabeled input (its gold target is empty).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    index: torch.Tensor
    labeled: torch.Tensor

    @property
    def size(self) -> int:
        return self.prompt_ids.shape[0]

    def with_targets(self, target_ids: torch.Tensor, target_mask: torch.Tensor) -> Batch:
        return replace(self, target_ids=target_ids, target_mask=target_mask)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.prompt_ids, self.prompt_mask, self.target_ids, self.target_mask, self.index, self.labeled)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in self.tensors()))

    def take(self, rows: torch.Tensor) -> Batch:
        """The examples at `rows` ([n] indices)."""
        return Batch(*(t[rows] for t in self.tensors()))

    def targets(self) -> list[list[int]]:
        """Each example's target tokens without padding."""
        return [row[mask.bool()].tolist() for row, mask in zip(self.target_ids, self.target_mask)]

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(*(t[start:stop] for t in self.tensors()))


def collate(prompts: list[list[int]], targets: list[list[int] | None], index: list[int], pad_id: int) -> Batch:
    """Pad a list of (prompt, target) token lists into a `Batch`; a None target is an unlabeled input."""
    b, p = len(prompts), max(map(len, prompts))
    prompt_ids = torch.full((b, p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        prompt_ids[i, p - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[i, p - len(prompt):] = 1
    target_ids, target_mask = pad_targets([t or [] for t in targets], pad_id)
    labeled = torch.tensor([t is not None for t in targets], dtype=torch.bool)
    return Batch(prompt_ids, prompt_mask, target_ids, target_mask, torch.tensor(index), labeled)


def pad_targets(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and mask for new targets (e.g. generated ones)."""
    t = max(1, max(map(len, sequences), default=0))
    ids = torch.full((len(sequences), t), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask
