"""A task: where its examples come from, split by split, and what scores its predictions.

Splits: `train` (labeled examples), `unlabeled` (inputs without targets, for methods that make
their own: teacher outputs, student samples), `eval` (held-out, scored after training). An
evaluation-only benchmark (Spider-DK, BIRD, ...) is a task with only an `eval` split. A new task
family is one `Task` subclass, one `Scorer` (kdlight/eval) and a YAML in `conf/data/`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from kdlight.data.example import Example
from kdlight.eval.scorer import Scorer

SPLITS = ("train", "unlabeled", "eval")


class Task(ABC):
    """A task family's data and scoring."""

    @abstractmethod
    def load(self, split: str) -> list[Example]:
        """The examples of `split` (one of `SPLITS`); an empty list for a split the task lacks."""

    @abstractmethod
    def scorer(self) -> Scorer:
        """What scores decoded predictions of this task's examples."""

    def validation(self) -> list[Example] | None:
        """Held-out examples for validation during training (held-out CE, model selection), when
        they differ from the `eval` split scored at the end; None: validate on the `eval` split."""
        return None

    def prepare(self) -> None:
        """One-off work before loading (generating data, converting a format). Every process of a
        run calls it, possibly at once: it must be idempotent and publish its results atomically
        (`kdlight.io.staging_dir`)."""

    def describe(self) -> str:
        """One line for logs: what the task reads."""
        return type(self).__name__

    def check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{self.describe()}: unknown split '{split}'; expected one of {SPLITS}")


def check_unique_ids(splits: Mapping[str, Sequence[Any]], where: str) -> None:
    """Raise if a record's `id` repeats within a split: predictions and teacher outputs are joined
    on ids."""
    for name, records in splits.items():
        seen: set[str] = set()
        for record in records:
            if record.id in seen:
                raise ValueError(f"{where}: id {record.id!r} is used twice in split '{name}'; predictions and teacher "
                                 "outputs are joined on ids")
            seen.add(record.id)


def check_prompt(prompt: str, placeholder: str) -> None:
    """Raise unless `data.task.prompt` is a format string whose only field is `{placeholder}`, which
    it must contain (else the model would not see its input)."""
    try:
        prompt.format(**{placeholder: ""})
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"data.task.prompt {prompt!r} must contain only the placeholder {{{placeholder}}} "
                         f"(write a literal brace as {{{{ or }}}}): {error!r}") from error
    if "{" + placeholder + "}" not in prompt:
        raise ValueError(f"data.task.prompt {prompt!r} has no {{{placeholder}}}: the model would not see its input")
