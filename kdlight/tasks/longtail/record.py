"""One long-tailed example as a source reads it, and the one target format of the family.

Every long-tail task (MATH, R52, multiple-choice QA, GSM8K, the generated `ltgen`) reads its files
into `LongTailRecord`s: the raw input text, the gold answer, the domain (subject, label or source
data set) and, where the data has one, a gold rationale. Targets are always written the same way,
so one parser reads the answer back from any model's output:

    <rationale>
    The answer is <answer>.

(`answer_target` is the answer line alone: the "fine-tune on gold answers" baseline.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

ANSWER_PREFIX = "The answer is "


@dataclass(frozen=True)
class LongTailRecord:
    """One example of a long-tailed, multi-domain data set.

    Attributes:
        id: stable within its split.
        text: the raw input text, exactly as in the source file (a stored teacher's files are
            keyed by it; the task's prompt template wraps it).
        answer: the gold answer in the form the scorer compares (a label, an option letter, a
            number, the content of MATH's `\\boxed{}`).
        domain: the subject, label or source data set the example belongs to.
        rationale: a gold rationale where the data has one (MATH's solutions, `ltgen`), else None.
        meta: anything else a reader of predictions may want (the options of a question, ...).
    """

    id: str
    text: str
    answer: str
    domain: str
    rationale: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class LongTailSource(Protocol):
    """Where a long-tail data set comes from.

    Attributes:
        kind: how answers are parsed and compared: `math` (boxed expressions, normalised), `choice`
            (an option letter), `label` (one of a closed label set), `number` (a number).
    """

    kind: str

    def splits(self) -> dict[str, list[LongTailRecord]]:
        """`train` (the pool that data selection draws from), `test`, and `teacher` where the data
        has gold rationales to fine-tune a local teacher on (the generated data)."""
        ...

    def labels(self) -> list[str] | None:
        """The closed label set of a classification data set (R52), else None."""
        ...

    def describe(self) -> str: ...


def answer_target(answer: str) -> str:
    """The answer line alone."""
    return f"{ANSWER_PREFIX}{answer}."


def rationale_target(rationale: str, answer: str, max_rationale_words: int | None = None) -> str:
    """A rationale followed by the answer line. `max_rationale_words` keeps the rationale's first
    words only, so that a length cut never removes the answer line."""
    words = rationale.split()
    if max_rationale_words is not None and len(words) > max_rationale_words:
        words = words[:max_rationale_words]
    body = " ".join(words)
    return f"{body}\n{answer_target(answer)}" if body else answer_target(answer)
