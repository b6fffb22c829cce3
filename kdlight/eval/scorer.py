"""Scorers: decoded predictions in, metrics and one record per example out.

A scorer scores each example (`score_examples`: one record per example holding its per-example
values, e.g. `ex: True`), aggregates the records (`aggregate`: by default the mean of each
per-example value, in percent), and declares which metrics a comparison table shows
(`table_metrics`). Naming a grouping key (`group_by`: the example's `group`, or a `meta` field)
adds per-group results and their macro average (the mean over groups, which weights a rare group
like a frequent one: the long-tail papers' headline) and micro average (over all examples):

    <prefix>/<metric>            over all examples
    <prefix>/<metric>/<group>    within one group (and <prefix>/n/<group>, its size)
    <prefix>/<metric>_macro      mean over groups
    <prefix>/<metric>_micro      over all examples (equal to <prefix>/<metric> for means)
"""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdlight.data.example import Example


@dataclass
class Scores:
    """What scoring one evaluation set gives.

    Attributes:
        metrics: every metric, keyed `<prefix>/<name>`.
        records: one JSON-ready record per example, in example order.
        table_metrics: the metric names (without prefix) a comparison table shows, in order.
        settings: how the predictions were scored (e.g. the comparator), for reports.
    """

    metrics: dict[str, float]
    records: list[dict]
    table_metrics: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)


class Scorer(ABC):
    """Base of every scorer.

    Attributes:
        table_metrics: what a comparison table shows, in order (e.g. `("ex", "ts")`).
        per_example: the per-example values averaged into metrics (in percent).
        group_by: `group` (the example's group), a `meta` key, or None for no per-group results.
    """

    table_metrics: tuple[str, ...] = ()
    per_example: tuple[str, ...] = ()
    group_by: str | None = None

    @abstractmethod
    def score_examples(self, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
        """One record per example with its per-example values (`self.per_example`) and anything
        that helps a reader (errors, the gold answer)."""

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        """Metrics over `records` (no prefix): the mean of each per-example value, in percent."""
        metrics: dict[str, float] = {"n": len(records)}
        for name in self.per_example:
            metrics[name] = 100.0 * statistics.fmean(float(r[name]) for r in records) if records else 0.0
        return metrics

    def settings(self) -> dict[str, Any]:
        """How this scorer scores, for metrics.json and reports."""
        return {"scorer": type(self).__name__}

    def check(self, examples: Sequence[Example], name: str) -> list[str]:
        """Problems found before any prediction exists: raise if the set cannot be scored at all
        (the caller names the set); otherwise return notes for a reader, each naming the set
        (`name`)."""
        return []

    def score(self, examples: Sequence[Example], predictions: Sequence[str], prefix: str) -> Scores:
        """Score `predictions[i]` against `examples[i]`."""
        if len(examples) != len(predictions):
            raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
        records = self.score_examples(examples, predictions)
        for index, (example, record) in enumerate(zip(examples, records)):
            record.update(index=index, id=example.id, group=self._group(example))
        metrics = self.aggregate(records)
        if self.group_by is not None:
            metrics |= self._by_group(records)
        extra = tuple(m for m in self.extra_table_metrics(metrics) if m not in self.table_metrics)
        table = tuple(self.table_metrics) + extra
        return Scores({f"{prefix}/{k}": v for k, v in metrics.items()}, records, table, self.settings())

    def extra_table_metrics(self, metrics: dict[str, float]) -> tuple[str, ...]:
        """Metrics a table must show for this particular evaluation (e.g. a ceiling below 100%)."""
        return ()

    def _group(self, example: Example) -> str | None:
        if self.group_by is None:
            return None
        value = example.group if self.group_by == "group" else example.meta.get(self.group_by)
        return None if value is None else str(value).replace("/", "_")

    def _by_group(self, records: Sequence[dict]) -> dict[str, float]:
        groups: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            if record["group"] is not None:
                groups[record["group"]].append(record)
        if not groups:
            return {}
        per_group = {group: self.aggregate(members) for group, members in sorted(groups.items())}
        overall = self.aggregate(records)
        metrics: dict[str, float] = {}
        for name in self.per_example:
            for group, values in per_group.items():
                metrics[f"{name}/{group}"] = values[name]
            metrics[f"{name}_macro"] = statistics.fmean(values[name] for values in per_group.values())
            metrics[f"{name}_micro"] = overall[name]
        metrics.update({f"n/{group}": values["n"] for group, values in per_group.items()})
        return metrics
