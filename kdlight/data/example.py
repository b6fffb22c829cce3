"""`Example`: one input of any task family, with its gold target if it has one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One example of any task.

    Attributes:
        id: a stable identifier within its split (predictions and stored teacher outputs are
            joined on it).
        prompt: the model input, exactly as the model sees it.
        target: the gold output; None for an unlabeled input (distillation can still use it:
            teacher outputs and student samples need only the prompt).
        group: the domain, class, subject or difficulty the example belongs to; scorers report
            per-group results and their macro and micro averages when one is set.
        meta: whatever the task's scorer needs besides the text (a database path, the raw
            question, several references, ...).
    """

    id: str
    prompt: str
    target: str | None = None
    group: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        return self.target is not None
