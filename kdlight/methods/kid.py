"""KID: knowledge distillation with imperfect data (Zhong et al., Findings of EMNLP 2024; docs/methods.md, KID).

Simulates the cascade of inference errors of on-policy distillation without generating: a
fraction α of the gold target's positions is masked, one no-grad student forward predicts them,
and the prediction is written back, giving an imperfect target ŷ. Teacher and student are then
teacher-forced on ŷ (reverse KL, the method's divergence); the CE term scores the gold tokens,
by default with the student reading ŷ in the same pass (`ce_on: gold_on_sequences`: ŷ is
aligned with the gold target position for position), or on the clean gold sequence in a pass of
its own (`ce_on: gold`). Prompt tokens are never touched.

Choices the paper leaves open are options: positions `random` (default), `uniform` (evenly
spaced), `hard` / `easy` (highest / lowest student entropy on the clean target); a per-sequence
count round(α·|y|) (default) or per-token Bernoulli(α) (random positions only); `argmax`
(default) or `sample` rewrite, or `mask_only` (the ablation: keep the mask tokens). The mask token
is the tokenizer's own; a tokenizer without one gets a dedicated one at start-up
(`kdlight.models.vocab.add_mask_token`), or `mask_token: bos` uses BOS, as the paper's example does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdlight.data.batch import Batch
from kdlight.methods.base import SequenceSource, StepContext, evaluating
from kdlight.models.fast_decode import draw
from kdlight.models.lm import output_head, take_positions, target_hidden, target_logits, target_positions

STRATEGIES = ("random", "uniform", "hard", "easy")
REWRITES = ("argmax", "sample", "mask_only")


@dataclass
class KidSequences(SequenceSource):
    """Imperfect rewrites of the gold target.

    Attributes:
        alpha: fraction of target positions to mask (the paper: 0.1-0.3 help, 0.5 hurts).
        strategy: which positions: random, uniform, hard, easy.
        count: `sequence` (round(α·|y|) positions per target) or `token` (Bernoulli(α) per position).
        rewrite: argmax, sample, or mask_only.
        mask_token: `dedicated` (the tokenizer's mask token, added if it has none) or `bos`.
    """

    alpha: float = 0.2
    strategy: str = "random"
    count: str = "sequence"
    rewrite: str = "argmax"
    mask_token: str = "dedicated"

    @property
    def needs_mask_token(self) -> bool:
        return self.mask_token == "dedicated"

    @property
    def aligned_with_gold(self) -> bool:
        return True  # rewrites tokens in place

    @property
    def default_ce_on(self) -> str:
        """The gold labels read through the rewrite, in the reverse KL's student pass: the paper's
        stated cost (one no-grad forward plus one forward and backward) fits only this reading,
        and the `kid_ce` study finds it scores as CE on the clean gold does (which costs a second
        student forward and backward; `ce_on: gold`)."""
        return "gold_on_sequences"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"kid alpha must be in [0, 1], got {self.alpha}")
        if self.strategy not in STRATEGIES or self.rewrite not in REWRITES or self.count not in ("sequence", "token"):
            raise ValueError(f"kid: strategy in {STRATEGIES}, rewrite in {REWRITES}, count in (sequence, token); "
                             f"got {self.strategy}, {self.rewrite}, {self.count}")
        if self.mask_token not in ("dedicated", "bos"):
            raise ValueError(f"kid: mask_token must be 'dedicated' or 'bos', got '{self.mask_token}'")
        if self.count == "token" and self.strategy != "random":
            raise ValueError("kid: count=token (Bernoulli per position) only goes with strategy=random")

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        if self.alpha == 0.0:
            return gold  # nothing masked: exactly the gold-sequence method (rkd)
        chosen = self.choose_positions(gold, ctx)  # [B, T] bool
        mask_id = ctx.tokenizer.mask_token_id if self.needs_mask_token else ctx.tokenizer.bos_token_id
        if mask_id is None:
            raise ValueError(f"kid: the tokenizer has no {'mask' if self.needs_mask_token else 'BOS'} token "
                             "(the training entry point adds a dedicated mask token; see add_mask_token)")
        masked = torch.where(chosen, torch.full_like(gold.target_ids, mask_id), gold.target_ids)
        if self.rewrite == "mask_only":
            return gold.with_targets(masked, gold.target_mask)
        with evaluating(ctx.student) as student:  # one student forward over x ⊕ y_masked
            predicted = self._predict_at(student, gold.with_targets(masked, gold.target_mask), chosen, ctx)
        return gold.with_targets(torch.where(chosen, predicted, gold.target_ids), gold.target_mask)

    def _predict_at(self, student, masked: Batch, chosen: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """[B, T] the student's rewrite (meaningful where `chosen`). Only the chosen positions' logits
        are formed: with a plain output head only they are projected to the vocabulary (a fifth of
        the targets at α = 0.2: the projection is most of a small student's forward at a large
        vocabulary), and a sampled rewrite draws one uniform number per chosen position."""
        positions = target_positions(chosen)
        head = output_head(student)
        if head is None:
            logits = take_positions(target_logits(student, masked, ctx.vocab_size), positions)
        else:
            bias = head.bias[: ctx.vocab_size] if head.bias is not None else None
            logits = torch.nn.functional.linear(target_hidden(student, masked, positions),
                                                head.weight[: ctx.vocab_size], bias)
        predicted = masked.target_ids.flatten().clone()
        predicted[positions] = self._predict(logits, ctx.generator)
        return predicted.view_as(masked.target_ids)

    def choose_positions(self, gold: Batch, ctx: StepContext) -> torch.Tensor:
        """[B, T] bool: the target positions to mask, a subset of `gold.target_mask`."""
        valid = gold.target_mask.bool()
        if self.count == "token":
            draw = torch.rand(valid.shape, generator=ctx.generator).to(valid.device)
            return valid & (draw < self.alpha)
        lengths = valid.sum(-1)
        k = torch.round(self.alpha * lengths.float()).long()  # [B]
        if self.strategy == "uniform":  # positions floor((j + 1/2) * |y| / k), j < k: evenly spaced
            chosen = torch.zeros_like(valid)
            for row, (n, m) in enumerate(zip(lengths.tolist(), k.tolist())):
                chosen[row, [int((j + 0.5) * n / m) for j in range(m)]] = True
            return chosen
        scores = self._scores(gold, ctx).masked_fill(~valid, float("-inf"))  # higher = chosen first
        rank = scores.argsort(-1, descending=True).argsort(-1)  # rank of each position in its row
        return valid & (rank < k.unsqueeze(-1))

    def _scores(self, gold: Batch, ctx: StepContext) -> torch.Tensor:
        shape = gold.target_ids.shape
        if self.strategy == "random":
            return torch.rand(shape, generator=ctx.generator).to(gold.target_ids.device)
        with evaluating(ctx.student) as student:
            log_q = torch.log_softmax(target_logits(student, gold, ctx.vocab_size).float(), -1)
        entropy = -(log_q.exp() * log_q.clamp_min(torch.finfo(torch.float32).min)).sum(-1)  # [B, T]
        return entropy if self.strategy == "hard" else -entropy

    def _predict(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[n, V] logits -> [n] tokens: the argmax, or a draw with the step's (CPU) generator."""
        if self.rewrite == "argmax":
            return logits.argmax(-1)
        return draw(torch.softmax(logits.float(), -1).cpu(), generator).to(logits.device)
