"""Any data in JSON-lines files: distil on your own prompts and targets without writing code.

    kdlight-train data=jsonl data.task.train_file=train.jsonl data.task.eval_file=dev.jsonl \
        data.task.target_field=answer data.task.group_field=domain

One example per line: a prompt field, a target field and, optionally, a group (domain) field and
an id field; every other field is kept in the example's `meta`. A training line whose target is
missing or null is an unlabeled input (as is every line of `unlabeled_file`): no gold loss reaches
it, and methods that write their own targets (teacher outputs, student samples) use it. Scoring
defaults to exact match, per group when a group field is named.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kdlight.data.example import Example
from kdlight.eval.scorer import Scorer
from kdlight.eval.text_match import ExactMatchScorer
from kdlight.io import read_jsonl_numbered
from kdlight.tasks.base import Task

log = logging.getLogger(__name__)


class JsonlTask(Task):
    """Prompts and targets read from JSONL files.

    Args:
        train_file: training lines (labeled, and unlabeled where the target is missing); None: none.
        eval_file: evaluation lines (each needs a target); None: none.
        unlabeled_file: extra inputs without targets; None: none.
        prompt_field, target_field: the keys holding the prompt and the target.
        group_field: the key holding the group (domain, class); None: no groups.
        id_field: the key holding a stable id; None: `<file name>:<line>`.
        scorer: how predictions are scored; None: exact match (per group if `group_field` is set).
    """

    def __init__(self, train_file: str | None = None, eval_file: str | None = None, unlabeled_file: str | None = None,
                 prompt_field: str = "prompt", target_field: str = "target", group_field: str | None = None,
                 id_field: str | None = None, scorer: Scorer | None = None):
        self.files = {"train": train_file, "eval": eval_file, "unlabeled": unlabeled_file}
        self.prompt_field, self.target_field = prompt_field, target_field
        self.group_field, self.id_field = group_field, id_field
        self._scorer = scorer or ExactMatchScorer(group_by="group" if group_field else None)

    def load(self, split: str) -> list[Example]:
        self.check_split(split)
        if split == "unlabeled":
            from_train = [e for e in self._read("train") if not e.labeled]
            return from_train + [Example(e.id, e.prompt, None, e.group, e.meta) for e in self._read("unlabeled")]
        examples = self._read(split)
        if split == "eval" and (missing := [e.id for e in examples if not e.labeled]):
            raise ValueError(f"{self.files['eval']}: {len(missing)} evaluation lines have no '{self.target_field}' "
                             f"(first: {missing[0]}); every evaluation example needs a target")
        return [e for e in examples if e.labeled]

    def _read(self, split: str) -> list[Example]:
        file = self.files[split]
        if file is None:
            return []
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{split} file not found: {path} (data.task.{split}_file)")
        examples = [self._example(row, path, line) for line, row in read_jsonl_numbered(path)]
        if self.id_field:
            seen: dict[str, int] = {}
            for line, example in enumerate(examples, start=1):
                if example.id in seen:
                    raise ValueError(f"{path}: '{self.id_field}' {example.id!r} is used twice (examples "
                                     f"{seen[example.id]} and {line}): ids must be unique, predictions and teacher "
                                     "outputs are joined on them")
                seen[example.id] = line
        return examples

    def _example(self, row: object, path: Path, line: int) -> Example:
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {line} is a {type(row).__name__}, expected an object with "
                             f"'{self.prompt_field}'")
        prompt = row.get(self.prompt_field)
        if not isinstance(prompt, str):
            raise ValueError(f"{path}: line {line} has no text in '{self.prompt_field}' "
                             f"(got {type(prompt).__name__}; keys: {sorted(row)})")
        target = row.get(self.target_field)
        if target is not None and not isinstance(target, str):
            raise ValueError(f"{path}: line {line}: '{self.target_field}' must be text or null, "
                             f"got {type(target).__name__}")
        group = row.get(self.group_field) if self.group_field else None
        identifier = str(row[self.id_field]) if self.id_field and self.id_field in row else f"{path.name}:{line}"
        meta = {k: v for k, v in row.items() if k not in (self.prompt_field, self.target_field)}
        return Example(identifier, prompt, target, None if group is None else str(group), meta)

    def scorer(self) -> Scorer:
        return self._scorer

    def describe(self) -> str:
        return "JSONL task (" + ", ".join(f"{k}: {v}" for k, v in self.files.items() if v) + ")"
