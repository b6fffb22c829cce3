"""`ltgen`: the project's own long-tailed, multi-domain data, generated in memory from a seed.

BalDistill (Zhou et al., EMNLP Findings 2024) distils a teacher's rationales into a student under a
budget, on data whose domains are long-tailed: a natural sample spends most of the budget on the
head domains, and the tail domains have too few real examples to balance it. This stand-in has
that shape at a size tiny models learn on a CPU in seconds:

- six domains, each a simple rule over one to three digits, asked in three wordings, with a short
  deterministic rationale that restates the input and reaches the answer (`after 3 comes 4`);
- a training pool whose domain counts follow Zipf's law (count of the domain of rank r
  proportional to 1/r^s): with the defaults 402, 101, 45, 25, 16 and 11 examples, so a budget of
  a few hundred examples cannot be spread evenly over the domains from the pool alone;
- a test split and a teacher split balanced over the domains (macro accuracy is the headline
  number; the teacher split carries the gold rationales a local teacher is fine-tuned on, so the
  teacher is good on every domain, tail included, as GPT-4 is in the paper).

The tail domains are mirror images of head domains (`before 7` against the head's `after 7`,
`first digit` against `last digit`), worded alike: a student that saw the tail only a few times
applies the head's rule to it, which is the failure that balancing the budget repairs.

Every record has its gold rationale; the pipeline shows the student only the teacher's. The input
spaces are small (ten numbers for `next`, 90 ordered pairs for `min`), so splits are drawn
independently from the same space and the same input can appear in the pool, the test split and
the teacher split: what a tail domain lacks is examples of its rule, not new inputs, and keeping
the test inputs out of the teacher split would leave some domains without test inputs at all.
Answers are numbers (`kind = "number"`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kdlight.tasks.longtail.record import LongTailRecord

# One drawn example of a rule: (wording slots, rationale, answer).
Drawn = tuple[dict[str, int], str, int]


def _next(rng: random.Random) -> Drawn:
    n = rng.randint(0, 9)
    return {"n": n}, f"after {n} comes {n + 1}", n + 1


def _previous(rng: random.Random) -> Drawn:
    n = rng.randint(1, 10)
    return {"n": n}, f"before {n} comes {n - 1}", n - 1


def _double(rng: random.Random) -> Drawn:
    n = rng.randint(0, 9)
    return {"n": n}, f"{n} plus {n} is {2 * n}", 2 * n


def _smaller(rng: random.Random) -> Drawn:
    a, b = rng.sample(range(10), 2)
    small, large = min(a, b), max(a, b)
    return {"a": a, "b": b}, f"{small} is less than {large}, so the smaller is {small}", small


def _last_digit(rng: random.Random) -> Drawn:
    n = rng.randint(100, 999)
    return {"n": n}, f"{n} ends with {n % 10}", n % 10


def _first_digit(rng: random.Random) -> Drawn:
    n = rng.randint(100, 999)
    return {"n": n}, f"{n} starts with {n // 100}", n // 100


@dataclass(frozen=True)
class Rule:
    """One domain: how an input is drawn, how it is asked, and its rationale and answer.

    Attributes:
        draw: draws the numbers of one input; gives the wording slots, the rationale and the answer.
        wordings: the ways the input is asked (one drawn per example), filled with the slots.
    """

    draw: Callable[[random.Random], Drawn]
    wordings: tuple[str, ...]


# The domains, head first (the default Zipf ranks). Mirrored rules share most of their words.
RULES: dict[str, Rule] = {
    "next": Rule(_next, ("what comes after {n}?", "the number after {n}", "count up from {n}")),
    "last_digit": Rule(_last_digit, ("last digit of {n}", "what is the last digit of {n}?", "{n}: the last digit")),
    "double": Rule(_double, ("double {n}", "what is twice {n}?", "{n} times two")),
    "smaller": Rule(_smaller, ("the smaller of {a} and {b}", "which is less, {a} or {b}?", "min of {a} and {b}")),
    "first_digit": Rule(_first_digit, ("first digit of {n}", "what is the first digit of {n}?",
                                       "{n}: the first digit")),
    "previous": Rule(_previous, ("what comes before {n}?", "the number before {n}", "count down from {n}")),
}


def zipf_counts(n: int, n_domains: int, exponent: float) -> list[int]:
    """`n` examples over `n_domains` ranks in proportion to 1/rank^exponent, rounded so that they
    sum to exactly `n` (largest remainders get the leftover examples; ties go to the higher rank)."""
    weights = [1.0 / rank ** exponent for rank in range(1, n_domains + 1)]
    shares = [n * w / sum(weights) for w in weights]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(n_domains), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class LongTailGenSource:
    """Generated long-tailed multi-domain data; the same settings always give the same data.

    Attributes:
        n_train: examples in the training pool (the pool that data selection draws from).
        zipf_exponent: s in count(rank r) ~ 1/r^s over the pool's domains (0: balanced pool).
        test_per_domain: test examples per domain (balanced).
        teacher_per_domain: examples per domain of the teacher split (balanced, gold rationales).
        seed: what is generated.
        domains: the domains used, head first (names of `RULES`); None: all, in `RULES`' order.
    """

    n_train: int = 600
    zipf_exponent: float = 2.0
    test_per_domain: int = 40
    teacher_per_domain: int = 100
    seed: int = 0
    domains: tuple[str, ...] | None = None

    kind = "number"

    def __post_init__(self) -> None:
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(self.domains))  # Hydra passes a list
            if unknown := [d for d in self.domains if d not in RULES]:
                raise ValueError(f"ltgen: unknown domains {unknown} (data.task.source.domains); "
                                 f"known: {list(RULES)}")
            if len(set(self.domains)) != len(self.domains) or not self.domains:
                raise ValueError(f"ltgen: domains must be distinct and not empty, got {list(self.domains)}")
        if self.zipf_exponent < 0:
            raise ValueError(f"ltgen: zipf_exponent must be >= 0, got {self.zipf_exponent}")
        if min(self.test_per_domain, self.teacher_per_domain) < 0:
            raise ValueError("ltgen: test_per_domain and teacher_per_domain must be >= 0")
        counts = self.train_counts()
        if min(counts) < 1:
            raise ValueError(f"ltgen: n_train={self.n_train} at zipf_exponent={self.zipf_exponent} leaves a domain "
                             f"without training examples (counts {counts}); raise n_train or lower the exponent")

    @property
    def domain_names(self) -> tuple[str, ...]:
        """The domains, head first."""
        return self.domains if self.domains is not None else tuple(RULES)

    def train_counts(self) -> list[int]:
        """Training pool examples per domain, head first."""
        return zipf_counts(self.n_train, len(self.domain_names), self.zipf_exponent)

    def splits(self) -> dict[str, list[LongTailRecord]]:
        rng = random.Random(self.seed)
        per_split = {"train": self.train_counts(),
                     "test": [self.test_per_domain] * len(self.domain_names),
                     "teacher": [self.teacher_per_domain] * len(self.domain_names)}
        splits = {}
        for split, counts in per_split.items():
            drawn = [self._example(domain, rng) for domain, count in zip(self.domain_names, counts)
                     for _ in range(count)]
            rng.shuffle(drawn)  # domains interleaved, as in a real pool
            splits[split] = [LongTailRecord(f"{split}:{i}", text, str(answer), domain, rationale, meta)
                             for i, (text, answer, domain, rationale, meta) in enumerate(drawn, start=1)]
        return splits

    @staticmethod
    def _example(domain: str, rng: random.Random) -> tuple[str, int, str, str, dict]:
        rule = RULES[domain]
        slots, rationale, answer = rule.draw(rng)
        wording = rng.randrange(len(rule.wordings))
        return rule.wordings[wording].format(**slots), answer, domain, rationale, {"wording": wording, **slots}

    def labels(self) -> list[str] | None:
        return None

    def describe(self) -> str:
        counts = ", ".join(f"{d} {c}" for d, c in zip(self.domain_names, self.train_counts()))
        return (f"generated long-tailed rule data (ltgen, seed {self.seed}: pool of {self.n_train} at Zipf "
                f"s={self.zipf_exponent} ({counts}), {self.test_per_domain} test and {self.teacher_per_domain} "
                f"teacher examples per domain)")
