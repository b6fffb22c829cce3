"""How a budget is spent: per stage, then per domain (BalDistill's quotas, Zhou et al. 2024).

A budget of B examples is spent over K stages, B/K per stage (`stage_budgets`: integers that sum
to B exactly, earlier stages taking the remainder). Within a stage, a policy with quotas shares the
stage's budget over the l domains (`domain_shares`), and `apportion` turns the shares into whole
numbers that sum to the stage budget exactly (largest remainders, ties in a seeded order):

- `naive` (BalDistill-N): uniform, 1/l per domain;
- `adaptive` (BalDistill-A): n_d/N · (1 - w_i) + 1/l · w_i, from the pool's natural distribution
  towards uniform as the stage weight w_i grows. The paper writes w_i = i/K with stages indexed
  i = 0..K-1 (`stage_indexing=authors`, the default, as the authors' code does): the first stage is
  natural and the last one is still (K-1)/K of the way to uniform. `stage_indexing=uniform_last`
  uses w_i = i/(K-1): natural first, exactly uniform last;
- `natural`: n_d/N (what random selection gives in expectation; for reference and tests).

n_d and N are the sizes of the whole pool before any selection (the data's distribution), not of
what is left of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

QUOTAS = ("none", "naive", "adaptive", "natural")
STAGE_INDEXING = ("authors", "uniform_last")


def stage_budgets(budget: int, stages: int) -> list[int]:
    """B split into K whole stage budgets, as equal as possible (the first B mod K take one more)."""
    if stages < 1:
        raise ValueError(f"policy.stages must be at least 1, got {stages}")
    if budget < 0:
        raise ValueError(f"policy.budget must be at least 0, got {budget}")
    base, extra = divmod(budget, stages)
    return [base + (1 if i < extra else 0) for i in range(stages)]


def stage_weight(stage: int, stages: int, indexing: str = "authors") -> float:
    """How far stage `stage` (0-based) of `stages` is from natural (0) towards uniform (1)."""
    if indexing not in STAGE_INDEXING:
        raise ValueError(f"policy.stage_indexing must be one of {STAGE_INDEXING}, got '{indexing}'")
    if not 0 <= stage < stages:
        raise ValueError(f"stage {stage} outside 0..{stages - 1}")
    if indexing == "authors":
        return stage / stages
    return stage / (stages - 1) if stages > 1 else 1.0


def domain_shares(kind: str, pool_sizes: Mapping[str, int], stage: int, stages: int,
                  indexing: str = "authors") -> dict[str, float]:
    """Each domain's share of a stage's budget (the shares sum to 1)."""
    domains = sorted(pool_sizes)
    if not domains:
        raise ValueError("no domains: the pool is empty")
    total = sum(pool_sizes.values())
    uniform = {d: 1 / len(domains) for d in domains}
    natural = {d: pool_sizes[d] / total for d in domains} if total else uniform
    if kind == "naive":
        return uniform
    if kind == "natural":
        return natural
    if kind == "adaptive":
        w = stage_weight(stage, stages, indexing)
        return {d: natural[d] * (1 - w) + uniform[d] * w for d in domains}
    raise ValueError(f"policy.quotas must be one of {QUOTAS[1:]} for per-domain shares, got '{kind}'")


def apportion(total: int, shares: Mapping[str, float], ties: Sequence[str] | None = None) -> dict[str, int]:
    """Whole numbers proportional to `shares` that sum to `total` exactly: each domain gets the
    floor of its exact amount, and the remaining units go to the largest remainders. Equal
    remainders are broken in the order `ties` (default: by domain name; the pipeline passes a
    seeded order per stage, so that with uniform shares the same domains do not get the extra unit
    in every stage)."""
    rank = {d: k for k, d in enumerate(ties if ties is not None else sorted(shares))}
    if total < 0:
        raise ValueError(f"cannot apportion a negative amount ({total})")
    weight = sum(shares.values())
    if not shares or weight <= 0:
        raise ValueError("cannot apportion over no domains or zero shares")
    exact = {d: total * s / weight for d, s in shares.items()}
    counts = {d: math.floor(x + 1e-9) for d, x in exact.items()}
    left = total - sum(counts.values())
    for d in sorted(exact, key=lambda d: (-round(exact[d] - counts[d], 9), rank[d]))[:left]:
        counts[d] += 1
    return counts
