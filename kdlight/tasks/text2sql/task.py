"""Text-to-SQL as a task: Spider-format splits in, SQL scored by execution out.

Every text-to-SQL dataset the project reads ends up as a Spider-format folder (`SpiderSource`):
the Spider family and BIRD directly, GeoQuery and Restaurants through a one-off conversion
(`Text2SQLDataSource`), and the project's own generated data (`GeneratedSource`). The prompt is
the CodeS-style schema prompt (`PromptParts`); the target is the SQL; the scorer executes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from kdlight.data.example import Example
from kdlight.eval.sql.scorer import SqlScorer
from kdlight.tasks.base import Task
from kdlight.tasks.text2sql.spider import PromptParts, SpiderSource, load_examples
from kdlight.tasks.text2sql.sqlgen import GeneratorSpec, ensure_generated

log = logging.getLogger(__name__)


class SpiderFormat(Protocol):
    """Anything that yields a Spider-format folder (converting or generating it first if needed)."""

    def resolve(self) -> SpiderSource: ...


@dataclass(frozen=True)
class GeneratedSource:
    """The project's own generated Spider-format data, built once into `cache_dir`."""

    spec: GeneratorSpec
    cache_dir: str

    def resolve(self) -> SpiderSource:
        return SpiderSource(str(ensure_generated(self.spec, self.cache_dir)))


class Text2SQLTask(Task):
    """Spider-format text-to-SQL.

    Args:
        source: where the data lives (`SpiderSource`, `Text2SQLDataSource`, `GeneratedSource`).
        prompt: which parts of the schema prompt to include.
        scorer: how predictions are executed and compared (comparator, limits, workers).
    """

    def __init__(self, source: SpiderFormat, prompt: PromptParts = PromptParts(), scorer: SqlScorer | None = None):
        self.source, self.prompt = source, prompt
        self._scorer = scorer or SqlScorer()
        self._resolved: SpiderSource | None = None

    def prepare(self) -> None:
        self.spider_source()  # converts or generates the data once

    def spider_source(self) -> SpiderSource:
        """The Spider-format folder (resolving a generated or converted source reads its inputs)."""
        if self._resolved is None:
            self._resolved = self.source.resolve()
        return self._resolved

    def load(self, split: str) -> list[Example]:
        self.check_split(split)
        source = self.spider_source()
        file = {"train": source.train_file, "eval": source.eval_file}.get(split)
        if file is None:  # no unlabeled split; no train split for an evaluation-only benchmark
            return []
        examples, report = load_examples(source, file, self.prompt)
        log.info(report.summary())
        return examples

    def scorer(self) -> SqlScorer:
        return self._scorer

    def describe(self) -> str:
        source = self.spider_source()
        return f"text-to-SQL in {source.root} (databases under {', '.join(source.db_roots)})"
