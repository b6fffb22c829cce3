"""Score predicted SQL: execution accuracy (EX), test-suite accuracy (TS) and exact match (EM).

Scoring runs in parallel over examples in worker processes (SQLite work is independent per
example, and a process can be abandoned safely). An example without a database cannot be
executed: it counts as wrong for EX/TS and is reported in `n_unexecutable`.
"""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from kdlight.eval.comparators import get_comparator
from kdlight.eval.exact_match import exact_match
from kdlight.eval.sql_execution import execute


@dataclass(frozen=True)
class ExecutionLimits:
    """Per-query guards.

    Attributes:
        timeout_s: time limit per query, enforced inside SQLite.
        max_rows: results with more rows count as errors.
    """

    timeout_s: float = 5.0
    max_rows: int = 100_000


@dataclass(frozen=True)
class ScoreItem:
    prediction: str
    gold: str
    db_path: str | None
    suite: tuple[str, ...] = ()
    hardness: str | None = None


@dataclass
class ItemScore:
    ex: bool
    ts: bool
    em: bool
    executable: bool
    pred_error: str | None = None
    gold_error: str | None = None


@dataclass
class Text2SQLReport:
    """Aggregated scores, in percent, with the count behind each."""

    n: int
    ex: float
    ts: float
    em: float
    n_unexecutable: int
    n_gold_errors: int
    by_hardness: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/ex": self.ex, f"{prefix}/ts": self.ts, f"{prefix}/em": self.em, f"{prefix}/n": self.n,
               f"{prefix}/n_unexecutable": self.n_unexecutable, f"{prefix}/n_gold_errors": self.n_gold_errors}
        for level, scores in self.by_hardness.items():
            out.update({f"{prefix}/ex_{level}": scores["ex"], f"{prefix}/n_{level}": scores["n"]})
        return out


def score_one(item: ScoreItem, comparator: str, limits: ExecutionLimits) -> ItemScore:
    """EX on the main database, TS on every database of the suite, EM on the text."""
    em = exact_match(item.prediction, item.gold)
    if item.db_path is None:
        return ItemScore(False, False, em, executable=False)
    comp = get_comparator(comparator)
    pred_sql, gold_sql = comp.prepare(item.prediction), comp.prepare(item.gold)
    verdicts = []
    first_errors = (None, None)
    for db in item.suite or (item.db_path,):
        pred = execute(db, pred_sql, limits.timeout_s, limits.max_rows)
        gold = execute(db, gold_sql, limits.timeout_s, limits.max_rows)
        if not verdicts:
            first_errors = (pred.error, gold.error)
        verdicts.append(pred.ok and gold.ok and comp.equal(pred, gold, gold_sql))
        if not verdicts[-1]:
            break  # TS needs every database to agree; EX is the first verdict
    return ItemScore(verdicts[0], all(verdicts), em, True, *first_errors)


def _score_star(args: tuple) -> ItemScore:
    return score_one(*args)


def score_predictions(items: list[ScoreItem], comparator: str = "test_suite",
                      limits: ExecutionLimits = ExecutionLimits(), workers: int = 2,
                      progress: bool = True) -> tuple[Text2SQLReport, list[ItemScore]]:
    """Score every item (in `workers` processes; 0 or 1 scores in this process)."""
    get_comparator(comparator)  # fail fast on a misspelt name
    jobs = [(item, comparator, limits) for item in items]
    bar = dict(total=len(jobs), desc=f"scoring SQL ({comparator})", disable=not progress, leave=False)
    if workers <= 1 or len(jobs) < 2:
        scores = [score_one(*job) for job in tqdm(jobs, **bar)]
    else:
        # spawn: the trainer process holds torch threads; forking it is unsafe.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            chunk = max(1, len(jobs) // (workers * 8))
            scores = list(tqdm(pool.map(_score_star, jobs, chunksize=chunk), **bar))
    return aggregate(items, scores), scores


def aggregate(items: list[ScoreItem], scores: list[ItemScore]) -> Text2SQLReport:
    n = len(scores)

    def pct(values: list[bool]) -> float:
        return 100.0 * sum(values) / len(values) if values else 0.0

    levels: dict[str, list[ItemScore]] = defaultdict(list)
    for item, score in zip(items, scores):
        if item.hardness:
            levels[item.hardness].append(score)
    return Text2SQLReport(
        n=n,
        ex=pct([s.ex for s in scores]),
        ts=pct([s.ts for s in scores]),
        em=pct([s.em for s in scores]),
        n_unexecutable=sum(not s.executable for s in scores),
        n_gold_errors=sum(s.gold_error is not None for s in scores),
        by_hardness={lv: {"ex": pct([s.ex for s in ss]), "n": len(ss)} for lv, ss in sorted(levels.items())},
    )


def score_record(item: ScoreItem, score: ItemScore) -> dict:
    """One line of predictions.jsonl."""
    record = asdict(item)
    record["suite"] = [Path(p).name for p in item.suite]
    record.update(asdict(score))
    return record
