"""Exact match of generated text against the gold target, after light normalisation.

The default scorer of the generic JSONL task: a prediction is right when it equals the target
once surrounding whitespace is stripped and inner runs of whitespace are one space (and, with
`lowercase`, case is ignored).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kdlight.data.example import Example
from kdlight.eval.scorer import Scorer


def normalize_text(text: str, lowercase: bool = False) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text.lower() if lowercase else text


class ExactMatchScorer(Scorer):
    """`em`: the share of predictions equal to their target after normalisation.

    Args:
        lowercase: ignore case.
        group_by: per-group results (`group`, or a `meta` key), with macro and micro averages.
    """

    per_example = ("em",)
    table_metrics = ("em",)

    def __init__(self, lowercase: bool = False, group_by: str | None = None):
        self.lowercase, self.group_by = lowercase, group_by

    def score_examples(self, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
        def right(prediction: str, target: str | None) -> bool:
            same = normalize_text(prediction, self.lowercase) == normalize_text(target or "", self.lowercase)
            return target is not None and same

        return [{"prediction": p, "target": e.target, "em": right(p, e.target)} for e, p in zip(examples, predictions)]

    def settings(self) -> dict:
        return {"scorer": "exact_match", "lowercase": self.lowercase}
