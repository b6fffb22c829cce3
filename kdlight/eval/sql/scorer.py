"""Score predicted SQL: execution accuracy (EX), test-suite accuracy (TS) and exact match (EM).

Semantics (docs/tasks.md, text-to-SQL metrics): EX executes prediction and gold on the example's
database and compares the results with the named comparator; TS repeats that on every database of
the example's test suite (all `.sqlite` files in its folder) and needs all to agree; EM compares
normalised SQL text. An empty prediction is wrong (it would otherwise "execute" to no rows and
match every empty gold result). An example without a database cannot be executed: it counts as
wrong, and the share of examples that can be executed is reported as the `ceiling`.

Scoring runs in parallel worker processes (SQLite work is independent per example).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from kdlight.data.example import Example
from kdlight.eval.scorer import Scorer
from kdlight.eval.sql.comparators import get_comparator
from kdlight.eval.sql.exact_match import exact_match
from kdlight.eval.sql.execution import execute
from kdlight.processes import worker_pool


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
    """One prediction with what it is executed against."""

    prediction: str
    gold: str
    db_path: str | None
    suite: tuple[str, ...] = ()


@dataclass
class ItemScore:
    ex: bool
    ts: bool
    em: bool
    executable: bool
    pred_error: str | None = None
    gold_error: str | None = None


def score_one(item: ScoreItem, comparator: str, limits: ExecutionLimits) -> ItemScore:
    """EX on the main database, TS on every database of the suite, EM on the text."""
    em = exact_match(item.prediction, item.gold)
    if item.db_path is None:
        return ItemScore(False, False, em, executable=False)
    if not item.prediction.strip():
        return ItemScore(False, False, em, executable=True, pred_error="empty prediction")
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


# Fewer items are scored in this process: starting the workers costs ~5 s, while 300 generated
# questions (3 databases each) score in ~2-3 s in one process (measured on 2 CPU cores).
PARALLEL_FROM = 500


def score_items(items: Sequence[ScoreItem], comparator: str = "test_suite", limits: ExecutionLimits = ExecutionLimits(),
                workers: int = 2, progress: bool = True, parallel_from: int = PARALLEL_FROM) -> list[ItemScore]:
    """Score every item: in `workers` processes for `parallel_from` items or more, else here."""
    get_comparator(comparator)  # fail fast on a misspelt name
    jobs = [(item, comparator, limits) for item in items]
    bar = dict(total=len(jobs), desc=f"scoring SQL ({comparator})", disable=not progress, leave=False)
    if workers <= 1 or len(jobs) < parallel_from:
        return [score_one(*job) for job in tqdm(jobs, **bar)]
    with worker_pool(workers) as pool:  # the workers end with this process, even on kill -9
        chunk = max(1, len(jobs) // (workers * 8))
        return list(tqdm(pool.map(_score_star, jobs, chunksize=chunk), **bar))


class SqlScorer(Scorer):
    """EX, TS and EM for text-to-SQL examples (`meta`: `db_path`, `suite`; target: the gold SQL).

    Args:
        comparator: execution-accuracy comparator (`test_suite`, `spider`, `bird`).
        limits: per-query time limit and row cap.
        workers: processes that execute SQL in parallel.
        parallel_from: sets smaller than this are scored in one process (starting workers costs
            more than it saves).
        table_metrics: what a comparison table shows (BIRD: EX only, one database per question).
        group_by: EX/TS/EM per difficulty (`group`: Spider hardness, BIRD difficulty), or None.
    """

    per_example = ("ex", "ts", "em")

    def __init__(self, comparator: str = "test_suite", limits: ExecutionLimits = ExecutionLimits(), workers: int = 2,
                 table_metrics: Sequence[str] = ("ex", "ts"), group_by: str | None = "group",
                 parallel_from: int = PARALLEL_FROM):
        get_comparator(comparator)
        self.comparator, self.limits, self.workers, self.parallel_from = comparator, limits, workers, parallel_from
        self.table_metrics, self.group_by = tuple(table_metrics), group_by

    def score_examples(self, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
        items = [ScoreItem(p, e.target or "", e.meta.get("db_path"), tuple(e.meta.get("suite", ())))
                 for e, p in zip(examples, predictions)]
        scores = score_items(items, self.comparator, self.limits, self.workers, parallel_from=self.parallel_from)
        return [{"question": e.meta.get("question"), **_record(item, score)}
                for e, item, score in zip(examples, items, scores)]

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        metrics = super().aggregate(records)
        executable = sum(r["executable"] for r in records)
        metrics |= {"n_unexecutable": len(records) - executable,
                    "n_gold_errors": sum(r["gold_error"] is not None for r in records),
                    "ceiling": 100.0 * executable / len(records) if records else 0.0}
        return metrics

    def extra_table_metrics(self, metrics: dict[str, float]) -> tuple[str, ...]:
        return ("ceiling",) if metrics["ceiling"] < 100.0 else ()

    def settings(self) -> dict:
        return {"scorer": "sql", "comparator": self.comparator, "timeout_s": self.limits.timeout_s,
                "max_rows": self.limits.max_rows}

    def check(self, examples: Sequence[Example], name: str) -> list[str]:
        with_db = [e for e in examples if e.meta.get("db_path")]
        if examples and not with_db:
            raise ValueError(f"none of its {len(examples)} questions has a database to execute on "
                             f"(a copy without its database folder?): execution accuracy would be 0 for every model")
        notes = []
        if len(with_db) < len(examples):
            notes.append(f"'{name}': {len(examples) - len(with_db)} of {len(examples)} questions have no database and "
                         f"count as wrong: the ceiling is {100.0 * len(with_db) / len(examples):.1f}%")
        if "ts" in self.table_metrics and with_db and all(len(e.meta.get("suite", ())) <= 1 for e in with_db):
            notes.append(f"'{name}': TS equals EX: each database folder holds one database (no test-suite databases)")
        return notes


def _record(item: ScoreItem, score: ItemScore) -> dict:
    """One line of the predictions file."""
    record = asdict(item)
    record["suite"] = [Path(p).name for p in item.suite]
    record.update(asdict(score))
    return record
