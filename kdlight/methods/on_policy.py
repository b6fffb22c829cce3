"""Student samples as targets: the on-policy sequence source of GKD, ImitKD and f-distill.

- GKD (Agarwal et al., ICLR 2024): with probability λ a *batch's* targets are replaced by the
  student's own samples (`per: batch`); loss generalised JSD(β).
- ImitKD (Lin et al., EMNLP 2020, as compared in KID): per *request*, gold or a student sample with
  probability ½ each (`per: example`, λ = 0.5); loss forward KL.
- f-distill (Wen et al., ACL 2023, as compared in KID): per request, the teacher's (cached) output
  or a student sample with probability ½ each (`otherwise: TeacherOutputs`); loss TVD.
- Joint-Teaching (Calderon et al., ACL 2023): on a fixed share λ of the steps (`per: step`, every
  second step for λ = ½, deterministic as in the authors' code) the student's own samples (top-p
  0.95, T 1) replace the batch's targets, otherwise the teacher's pseudo-targets
  (`otherwise: PseudoTargets`); loss forward KL on both. λ = 1 is "student PTs only".

Samples are drawn from the student's full distribution (`top_k: 0`, `top_p: 1`, T = 1 by default)
with the batched, KV-cached decoder in eval mode and without gradient; the time it takes is
reported as `train/generation_s`, apart from the loss step, because generation dominates the cost
of these methods. Prompts are never changed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from kdlight.data.batch import Batch, pad_targets
from kdlight.methods.base import PrepareContext, SequenceSource, StepContext, evaluating
from kdlight.models.decoding import Decoding, generate

PER = ("batch", "example", "step")


@dataclass
class StudentSamples(SequenceSource):
    """Replace gold targets with the student's samples.

    Attributes:
        lam: probability of replacing (the batch's targets, or each example's); with `per: step`, the
            share of steps whose targets are replaced.
        per: `batch` (GKD: a random draw per batch), `example` (ImitKD: per example) or `step`
            (Joint-Teaching: no draw; step t uses samples when floor((t+1)·λ) > floor(t·λ), so
            exactly floor(n·λ) of the first n steps do, evenly spread).
        decoding: how the student samples (one sequence per prompt).
        otherwise: the source of the targets that are not replaced (None: gold), e.g. the
            teacher's outputs for f-distill.
    """

    lam: float = 0.5
    per: str = "batch"
    decoding: Decoding = field(default_factory=lambda: Decoding(strategy="sample"))
    otherwise: SequenceSource | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0 or self.per not in PER:
            raise ValueError(f"student samples: lam in [0, 1] and per in {PER}; got {self.lam}, {self.per}")
        if self.decoding.num_return_sequences != 1:
            raise ValueError("student samples: one sample per prompt (decoding.num_return_sequences=1)")

    @property
    def needs_teacher(self) -> bool:
        return self.otherwise is not None and self.otherwise.needs_teacher

    @property
    def needs_preparation(self) -> bool:
        """With λ = 1 every target is a sample: `otherwise` is never asked (its teacher PTs are not
        generated)."""
        return self.otherwise is not None and self.otherwise.needs_preparation and self.lam < 1.0

    @property
    def keeps_gold_pairs(self) -> bool:
        """Trained on the same items as `otherwise` (e.g. pseudo-targets' gold pairs + inputs)."""
        return self.otherwise is not None and self.otherwise.keeps_gold_pairs

    @property
    def covers_unlabeled(self) -> bool:
        """With λ = 1 every target is a sample; otherwise the rows left to `otherwise` need it to
        cover them (gold does not)."""
        return self.lam == 1.0 or (self.otherwise is not None and self.otherwise.covers_unlabeled)

    def prepare(self, ctx: PrepareContext) -> None:
        """Precompute what the `otherwise` source needs (e.g. f-distill's cached teacher outputs)."""
        if self.needs_preparation:
            self.otherwise.prepare(ctx)

    def samples_at(self, step: int) -> bool:
        """`per: step`: whether step `step` (from 0) trains on student samples (exact arithmetic:
        in floats, floor(n·λ) would be off by one for some λ and n)."""
        lam = Fraction(self.lam).limit_denominator(1_000_000)
        return math.floor((step + 1) * lam) > math.floor(step * lam)

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        if self.per == "step":
            use = torch.full((gold.size,), self.samples_at(ctx.step))
        else:
            draws = torch.rand(1 if self.per == "batch" else gold.size, generator=ctx.generator) < self.lam
            use = draws.expand(gold.size) if self.per == "batch" else draws
        base = gold if self.otherwise is None or use.all() else self.otherwise.sequences(gold, ctx)
        if not use.any():
            return base
        rows = use.nonzero().flatten()
        samples = self.sample(gold.take(rows.to(gold.prompt_ids.device)), ctx)
        targets = base.targets()
        for row, sample in zip(rows.tolist(), samples):
            targets[row] = sample
        ids, mask = pad_targets(targets, ctx.tokenizer.pad_token_id)
        return base.with_targets(ids.to(gold.target_ids.device), mask.to(gold.target_mask.device))

    def sample(self, prompts: Batch, ctx: StepContext) -> list[list[int]]:
        started = time.perf_counter()
        with evaluating(ctx.student) as student:  # no dropout while sampling
            samples = generate(student, prompts, self.decoding, ctx.tokenizer.eos_token_id, ctx.tokenizer.pad_token_id,
                               ctx.vocab_size, synced=ctx.synced)
        ctx.timings["generation_s"] = ctx.timings.get("generation_s", 0.0) + time.perf_counter() - started
        return samples
