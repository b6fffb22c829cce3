"""Natural language generation as a task: input text in, free text out, scored by BLEU and ROUGE.

The setting of Calderon et al. (ACL 2023, "A Systematic Study of Knowledge Distillation for Natural
Language Generation with Pseudo-Target Training"): a medium-sized labeled set and plentiful
unlabeled inputs of the same distribution, which pseudo-target methods (a teacher's beam outputs or
samples) turn into training data. `NlgTask` makes that split from any source's training pool:
`labeled` inputs keep their references, the rest become unlabeled inputs (`target=None`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kdlight.data.example import Example
from kdlight.eval.nlg import NlgScorer
from kdlight.tasks.base import Task, check_prompt, check_unique_ids


@dataclass(frozen=True)
class NlgRecord:
    """One input and its references, as a source reads it.

    Attributes:
        id: stable within its split.
        input: the input text (the prompt template wraps it).
        references: every valid output, at least one; the first is the training target.
        meta: what a reader of the predictions may want (a story id, the answer span, ...).
    """

    id: str
    input: str
    references: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)


class NlgSource(Protocol):
    """Where an NLG data set comes from: its training pool (`train`) and held-out splits by name."""

    def splits(self) -> dict[str, list[NlgRecord]]: ...

    def describe(self) -> str: ...


class NlgTask(Task):
    """Text to text with a labeled / unlabeled training split.

    Args:
        source: the data (`ShakespeareSource`, `SquadQGSource`, `ArtSource`, `XSumSource`,
            `E2ESource`, `NlgGenSource`).
        labeled: how many training inputs keep their references, drawn after a shuffle seeded by
            `split_seed`; the other training inputs are unlabeled. None: all labeled; 0: none.
        split_seed: the shuffle that picks the labeled inputs (both splits come in that order, so
            `data.limit_train` and `data.limit_unlabeled` take random subsets, not a file's start).
        eval_split: the held-out split the run is scored on (`test`; `valid` to tune settings).
        dev_split: a held-out split to validate on during training (held-out CE, `select_by`),
            apart from `eval_split`; None: validate on `eval_split`. The no-label setting needs
            one (`valid`), its targets then written by the teacher (`data.validation_targets`).
        prompt: the model input; `{input}` is replaced by the source's input text. Decoder-only
            models need a cue where the output starts (e.g. `"{input}\\nModern:"`).
        expand_references: one labeled training example per reference (ids `<id>:ref<j>`) instead
            of one per input with the first reference; for data with several human references per
            input (E2E). `labeled` still counts inputs.
        scorer: how predictions are scored; None: `NlgScorer()` (BLEU, ROUGE).
    """

    def __init__(self, source: NlgSource, labeled: int | None = None, split_seed: int = 0, eval_split: str = "test",
                 prompt: str = "{input}", expand_references: bool = False, scorer: NlgScorer | None = None,
                 dev_split: str | None = None):
        check_prompt(prompt, "input")
        if labeled is not None and labeled < 0:
            raise ValueError(f"data.task.labeled must be null (all) or >= 0, got {labeled}")
        if dev_split is not None and dev_split == eval_split:
            raise ValueError(f"data.task.dev_split and data.task.eval_split are both '{eval_split}': validation would "
                             "choose the model on the split it is scored on")
        self.source, self.labeled, self.split_seed, self.eval_split = source, labeled, split_seed, eval_split
        self.dev_split = dev_split
        self.prompt, self.expand_references = prompt, expand_references
        self._scorer = scorer or NlgScorer()
        self._splits: dict[str, list[NlgRecord]] | None = None

    def load(self, split: str) -> list[Example]:
        self.check_split(split)
        if split == "eval":
            return [self._example(record) for record in self._held_out(self.eval_split, "eval_split")]
        labeled, unlabeled = self._partition()
        if split == "unlabeled":
            return [Example(r.id, self.prompt.format(input=r.input), None, None, dict(r.meta)) for r in unlabeled]
        if not self.expand_references:
            return [self._example(r) for r in labeled]
        return [self._example(r, f"{r.id}:ref{j}", ref) for r in labeled for j, ref in enumerate(r.references)]

    def _example(self, record: NlgRecord, id: str | None = None, target: str | None = None) -> Example:
        meta = {"references": list(record.references), **record.meta}
        return Example(id or record.id, self.prompt.format(input=record.input), target or record.references[0],
                       None, meta)

    def _read(self) -> dict[str, list[NlgRecord]]:
        if self._splits is None:
            splits = self.source.splits()
            check_unique_ids(splits, self.source.describe())
            self._splits = splits
        return self._splits

    def validation(self) -> list[Example] | None:
        if self.dev_split is None:
            return None
        return [self._example(record) for record in self._held_out(self.dev_split, "dev_split")]

    def _held_out(self, name: str, key: str) -> list[NlgRecord]:
        splits = self._read()
        held_out = sorted(split for split in splits if split != "train")
        if name not in held_out:
            raise ValueError(f"{self.source.describe()} has no held-out split '{name}' (data.task.{key}); it has "
                             f"{held_out}")
        return splits[name]

    def _partition(self) -> tuple[list[NlgRecord], list[NlgRecord]]:
        """(labeled, unlabeled) training inputs, in the order of a shuffle seeded by `split_seed`."""
        pool = list(self._read()["train"])
        if self.labeled is not None and self.labeled > len(pool):
            raise ValueError(f"data.task.labeled={self.labeled}, but the training pool of {self.source.describe()} "
                             f"has {len(pool)} inputs")
        random.Random(self.split_seed).shuffle(pool)
        cut = len(pool) if self.labeled is None else self.labeled
        return pool[:cut], pool[cut:]

    def scorer(self) -> NlgScorer:
        return self._scorer

    def describe(self) -> str:
        labeled = "all" if self.labeled is None else self.labeled
        return (f"NLG: {self.source.describe()}, {labeled} labeled (split seed {self.split_seed}), "
                f"eval '{self.eval_split}'")
