"""The three execution-accuracy comparators found in the wild (docs/tasks.md, text-to-SQL metrics).

They disagree on real predictions, so each is named and selectable:

- `spider`: the original Spider script. Results are keyed by column (the SELECT expression as
  SQLite names it), values kept in row order, so row order matters and column order does not as
  long as the expressions match.
- `test_suite` (Zhong et al., 2020; the official Spider metric since 2020, the default): DISTINCT
  is removed from both queries, results are compared as multisets of rows (as lists when the gold
  query has ORDER BY), under any permutation of the prediction's columns; `> =` is repaired.
- `bird`: the sets of result rows must be equal (order and duplicates ignored, column order kept).

Numbers compare by value in all three (Python equality): 3 == 3.0, as in the reference scripts.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import sqlparse

from kdlight.eval.sql.execution import ExecResult

_MAX_PERMUTATIONS = 5040  # 7 columns; wider results fall back to constrained search


@dataclass(frozen=True)
class Comparator:
    """How to prepare queries before execution and how to compare their results."""

    name: str
    prepare: Callable[[str], str]
    equal: Callable[[ExecResult, ExecResult, str], bool]  # (predicted, gold, gold_sql)


def _identity(sql: str) -> str:
    return sql


def repair_operators(sql: str) -> str:
    """`> =`, `< =`, `! =` as written by some tokenised gold queries -> `>=`, `<=`, `!=`."""
    return re.sub(r"([<>!])\s+=", r"\1=", sql)


def remove_distinct(sql: str) -> str:
    """Drop the DISTINCT keyword outside string literals, as the test-suite evaluation does.

    Only whitespace *between* tokens is collapsed: a literal is kept exactly as written, so
    `'Joe  Sharp'` (two spaces) still fails to match a stored 'Joe Sharp'.
    """
    # Every statement is kept: a prediction with two statements must still fail as one.
    tokens = [t for statement in sqlparse.parse(sql) for t in statement.flatten()]
    kept: list[str] = []
    for token in tokens:
        if token.ttype in sqlparse.tokens.Keyword and token.normalized == "DISTINCT":
            continue
        if token.is_whitespace:
            if kept and kept[-1] != " ":
                kept.append(" ")
        else:
            kept.append(token.value)
    return "".join(kept).strip()


def has_order_by(sql: str) -> bool:
    return re.search(r"\border\s+by\b", sql, flags=re.IGNORECASE) is not None


def _spider_equal(pred: ExecResult, gold: ExecResult, gold_sql: str) -> bool:
    def by_column(result: ExecResult) -> dict[str, list]:
        names = [c.lower() for c in result.columns]
        return {name: [row[i] for row in result.rows] for i, name in enumerate(names)}

    return by_column(pred) == by_column(gold)


def _bird_equal(pred: ExecResult, gold: ExecResult, gold_sql: str) -> bool:
    return set(pred.rows) == set(gold.rows)


def _test_suite_equal(pred: ExecResult, gold: ExecResult, gold_sql: str) -> bool:
    p, g = pred.rows, gold.rows
    if len(p) != len(g):
        return False
    if not g:
        return True  # empty == empty, whatever the columns
    if len(p[0]) != len(g[0]):
        return False
    ordered = has_order_by(gold_sql)
    target = g if ordered else Counter(g)
    for perm in _column_permutations(p, g):
        permuted = [tuple(row[i] for i in perm) for row in p]
        if (permuted if ordered else Counter(permuted)) == target:
            return True
    return False


def _column_permutations(pred: list[tuple], gold: list[tuple]):
    """Permutations of the prediction's columns whose column value-multisets match gold's.

    Only columns holding the same multiset of values can correspond, which prunes the search the
    way the test-suite script does before trying full permutations.
    """
    n = len(gold[0])
    pred_cols = [Counter(r[i] for r in pred) for i in range(n)]
    gold_cols = [Counter(r[j] for r in gold) for j in range(n)]
    candidates = [[i for i in range(n) if pred_cols[i] == gold_cols[j]] for j in range(n)]
    if any(not c for c in candidates):
        return
    count = 0
    for perm in itertools.product(*candidates):
        if len(set(perm)) == n:
            yield perm
            count += 1
            if count >= _MAX_PERMUTATIONS:
                return


def _test_suite_prepare(sql: str) -> str:
    return remove_distinct(repair_operators(sql))


COMPARATORS: dict[str, Comparator] = {
    "spider": Comparator("spider", _identity, _spider_equal),
    "test_suite": Comparator("test_suite", _test_suite_prepare, _test_suite_equal),
    "bird": Comparator("bird", _identity, _bird_equal),
}


def get_comparator(name: str) -> Comparator:
    try:
        return COMPARATORS[name]
    except KeyError:
        raise ValueError(f"unknown comparator '{name}'; expected one of {sorted(COMPARATORS)}") from None
