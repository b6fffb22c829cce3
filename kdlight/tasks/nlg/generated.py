"""`nlggen`: the project's own NLG data, a miniature E2E generated in memory from a seed.

A meaning representation (a name and 1-3 of five attributes, E2E's format:
`name[Nori], food[Thai], near[the park]`) is rendered by one of four paraphrase styles. Every style
is a valid output, so each input has four references, and the training target is one style drawn
per example with unequal weights. That is what the pseudo-target study needs from a stand-in
(Calderon et al. 2023): a teacher's beam search settles on one style per input (in practice
the one whose first tokens are likeliest), while its samples spread over all of them. Inputs are
unique across splits, so held-out MRs are new combinations of known values; texts are short
(< 40 tokens) for tiny models on CPU.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from kdlight.tasks.nlg.task import NlgRecord

NAMES = ("Aromi", "Bellini", "Cotto", "Dorado", "Elmo", "Fresco", "Giotto", "Haven", "Isola", "Jasper", "Kiwi",
         "Lumen", "Mirto", "Nori", "Olive", "Pesto")
VALUES = {"food": ("Italian", "French", "Chinese", "Indian", "Japanese", "English", "Thai", "Mexican"),
          "area": ("riverside", "city centre"), "price": ("cheap", "moderate", "high"), "family": ("yes", "no"),
          "near": ("the park", "the station", "the museum", "the market", "the bridge", "the cinema")}
# Per style: how each attribute is said ({v}: its value; family: the yes and the no phrase).
STYLES = (
    {"food": "serves {v} food", "area": "is in the {v}", "price": "has {v} prices",
     "family": ("is family friendly", "is not family friendly"), "near": "is near {v}"},
    {"food": "get {v} food", "area": "are in the {v}", "price": "pay {v} prices",
     "family": ("can bring your kids", "should leave the kids at home"), "near": "are close to {v}"},
    {"food": "{v} food", "area": "{v} area", "price": "{v} prices", "family": ("kids welcome", "no kids"),
     "near": "near {v}"},
    {"food": "cooks {v} dishes", "area": "sits in the {v}", "price": "charges {v} prices",
     "family": ("welcomes families", "does not welcome families"), "near": "is next to {v}"},
)
FRAMES = ("{name} {list}.", "At {name} you {list}.", "{name}: {list}.", "Try {name}, which {list}.")


def render(name: str, attributes: list[tuple[str, str]], style: int) -> str:
    """The text of an MR in one style (attributes in the MR's order)."""
    phrases = []
    for attribute, value in attributes:
        phrase = STYLES[style][attribute]
        phrases.append(phrase[value == "no"] if attribute == "family" else phrase.format(v=value))
    listed = ", ".join(phrases) if style == 2 or len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return FRAMES[style].format(name=name, list=listed)


@dataclass(frozen=True)
class NlgGenSource:
    """Generated MR-to-text data; the same settings always give the same data.

    Attributes:
        n_train: inputs in the training pool (the task splits it into labeled and unlabeled).
        n_valid, n_test: held-out inputs.
        seed: what is generated.
        style_weights: how often each of the four styles is the training target.
    """

    n_train: int = 3000
    n_valid: int = 200
    n_test: int = 200
    seed: int = 0
    style_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)

    def __post_init__(self) -> None:
        total = self.n_train + self.n_valid + self.n_test
        sizes = [len(values) for values in VALUES.values()]
        possible = len(NAMES) * sum(math.prod(c) for k in (1, 2, 3) for c in itertools.combinations(sizes, k))
        if total > possible // 2:
            raise ValueError(f"nlggen: {total} inputs requested; at most {possible // 2} (half of the {possible} "
                             "distinct MRs) can be drawn (data.task.source.n_train, n_valid, n_test)")
        if len(self.style_weights) != len(STYLES) or min(self.style_weights) < 0 or sum(self.style_weights) <= 0:
            raise ValueError(f"nlggen: style_weights must be {len(STYLES)} non-negative weights, "
                             f"got {list(self.style_weights)}")

    def splits(self) -> dict[str, list[NlgRecord]]:
        rng = random.Random(self.seed)
        seen: set[tuple] = set()
        splits = {}
        for split, n in (("train", self.n_train), ("valid", self.n_valid), ("test", self.n_test)):
            records = []
            while len(records) < n:
                name = rng.choice(NAMES)
                chosen = sorted(rng.sample(range(len(VALUES)), rng.randint(1, 3)))  # MR order: food ... near
                attributes = [(a, rng.choice(VALUES[a])) for a in (list(VALUES)[i] for i in chosen)]
                if (key := (name, *attributes)) in seen:
                    continue
                seen.add(key)
                style = rng.choices(range(len(STYLES)), weights=self.style_weights)[0]
                texts = [render(name, attributes, s) for s in range(len(STYLES))]
                mr = ", ".join(f"{a}[{v}]" for a, v in [("name", name), *attributes])
                references = (texts[style], *(t for s, t in enumerate(texts) if s != style))
                records.append(NlgRecord(f"{split}:{len(records) + 1}", mr, references, {"style": style}))
            splits[split] = records
        return splits

    def describe(self) -> str:
        return f"generated MR-to-text data (nlggen, seed {self.seed}: {self.n_train} train, {self.n_valid} valid, " \
               f"{self.n_test} test)"
