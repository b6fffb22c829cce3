"""Execution accuracy: comparator semantics, safety of executing model output, time limits."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from kdlight.eval.comparators import get_comparator, remove_distinct, repair_operators
from kdlight.eval.exact_match import exact_match
from kdlight.eval.sql_execution import execute
from kdlight.eval.text2sql import ExecutionLimits, ScoreItem, score_one, score_predictions


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "music" / "music.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, country TEXT, rating REAL);
        INSERT INTO singer VALUES (1, 'Ann', 30, 'France', 4.0), (2, 'Bob', 25, 'France', 3.5),
                                  (3, 'Cid', 41, 'Japan', 4.0), (4, 'Dee', 25, 'Chile', 2.0);
    """)
    conn.commit()
    conn.close()
    return path


def same(comparator: str, pred: str, gold: str, db: Path) -> bool:
    return score_one(ScoreItem(pred, gold, str(db)), comparator, ExecutionLimits(timeout_s=2)).ex


def test_order_by_matters_only_when_gold_orders(db):
    asc, desc = "SELECT name FROM singer ORDER BY age ASC", "SELECT name FROM singer ORDER BY age DESC"
    assert not same("test_suite", desc, asc, db)  # gold orders: order must match
    assert same("test_suite", desc, "SELECT name FROM singer", db)  # gold unordered: bag semantics
    assert not same("spider", desc, "SELECT name FROM singer", db)  # spider: row order always matters
    assert same("bird", desc, asc, db)  # bird: sets


def test_duplicates(db):
    with_dups, without = "SELECT country FROM singer", "SELECT DISTINCT country FROM singer"
    assert same("test_suite", with_dups, without, db)  # DISTINCT removed from both by default
    assert same("bird", with_dups, without, db)  # sets ignore duplicates
    assert not same("spider", with_dups, without, db)
    # without DISTINCT on either side, bags must match in multiplicity
    assert not same("test_suite", "SELECT country FROM singer WHERE age < 35",
                    "SELECT country FROM singer WHERE age < 35 GROUP BY country", db)


def test_column_permutation(db):
    a, b = "SELECT name, age FROM singer", "SELECT age, name FROM singer"
    assert same("test_suite", a, b, db)  # columns may be permuted
    assert same("spider", a, b, db)  # keyed by column name
    assert not same("bird", a, b, db)  # column order kept
    # same values under different names: spider keys by column, test_suite by values
    renamed = "SELECT name AS n, age AS a FROM singer"
    assert not same("spider", renamed, a, db)
    assert same("test_suite", renamed, a, db)


def test_empty_results_and_wrong_shapes(db):
    empty1 = "SELECT name FROM singer WHERE age > 100"
    empty2 = "SELECT name, age FROM singer WHERE age > 200"
    for name in ("test_suite", "bird", "spider"):
        assert same(name, empty1, empty1, db)
    assert same("test_suite", empty2, empty1, db)  # empty == empty whatever the columns
    assert not same("test_suite", empty1, "SELECT name FROM singer", db)


def test_float_and_int_compare_by_value(db):
    as_float = "SELECT CAST(age AS REAL) AS age FROM singer WHERE id = 1"  # 30.0
    as_int = "SELECT age FROM singer WHERE id = 1"  # 30
    for name in ("test_suite", "bird", "spider"):
        assert same(name, as_float, as_int, db), name
        assert not same(name, "SELECT 30.5 AS age", as_int, db), name


def test_errors_count_as_wrong_and_gold_errors_are_reported(db):
    score = score_one(ScoreItem("SELEC name FROM singer", "SELECT name FROM singer", str(db)), "test_suite",
                      ExecutionLimits())
    assert not score.ex and score.pred_error and score.gold_error is None


def test_operator_repair_and_distinct_removal():
    assert repair_operators("SELECT a FROM t WHERE b > = 3 AND c ! = 2") == "SELECT a FROM t WHERE b >= 3 AND c != 2"
    assert remove_distinct("SELECT DISTINCT a FROM t WHERE b = 'distinct'") == "SELECT a FROM t WHERE b = 'distinct'"


def test_test_suite_accuracy_needs_every_database(db):
    other = db.parent / "music_ts1.sqlite"
    conn = sqlite3.connect(other)
    conn.executescript("""CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, country TEXT, rating REAL);
                          INSERT INTO singer VALUES (1, 'Eve', 30, 'Peru', 1.0), (2, 'Fay', 38, 'Peru', 1.0);""")
    conn.commit()
    conn.close()
    # Agrees on the main database (only Cid is over 35) but not on the other (Fay is 38).
    item = ScoreItem("SELECT name FROM singer WHERE age > 40", "SELECT name FROM singer WHERE age > 35",
                     str(db), (str(db), str(other)))
    score = score_one(item, "test_suite", ExecutionLimits())
    assert score.ex and not score.ts


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("prediction", [
    "DROP TABLE singer",
    "UPDATE singer SET age = 0",
    "DELETE FROM singer",
    "INSERT INTO singer VALUES (9, 'X', 1, 'Y', 1.0)",
    "CREATE TABLE x (a)",
    "PRAGMA journal_mode = WAL",
    "ATTACH DATABASE 'other.db' AS other",
    "SELECT 1; DROP TABLE singer",
    "VACUUM",
])
def test_predictions_never_change_the_database(db, prediction, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = digest(db)
    files_before = sorted(p.name for p in tmp_path.rglob("*"))
    score = score_one(ScoreItem(prediction, "SELECT count(*) FROM singer", str(db)), "test_suite", ExecutionLimits())
    assert not score.ex and score.pred_error
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == files_before  # nothing created either
    assert execute(db, "SELECT count(*) FROM singer").rows == [(4,)]


def test_never_ending_query_is_interrupted_within_twice_the_limit(db):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    started = time.monotonic()
    score = score_one(ScoreItem(endless, "SELECT count(*) FROM singer", str(db)), "test_suite",
                      ExecutionLimits(timeout_s=0.5))
    elapsed = time.monotonic() - started
    assert not score.ex and "timeout" in score.pred_error
    assert elapsed < 2 * 0.5 + 0.5  # the gold query takes milliseconds on top


def test_row_cap_counts_as_error(db):
    result = execute(db, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
                     timeout_s=5, max_rows=1000)
    assert result.error == "more than 1000 rows"


def test_missing_database_is_unexecutable_not_an_exception():
    item = ScoreItem("SELECT 1", "SELECT 1", None)
    report, scores = score_predictions([item], workers=1, progress=False)
    assert report.n_unexecutable == 1 and report.ex == 0.0 and report.em == 100.0


def test_parallel_scoring_matches_serial(db):
    golds = ["SELECT name FROM singer", "SELECT count(*) FROM singer", "SELECT max(age) FROM singer"]
    preds = ["SELECT name FROM singer", "SELECT count(*) FROM singer WHERE age > 1", "SELECT min(age) FROM singer"]
    items = [ScoreItem(p, g, str(db), hardness=h) for p, g, h in zip(preds, golds, ["easy", "easy", "medium"])]
    serial, s1 = score_predictions(items, workers=1, progress=False)
    parallel, s2 = score_predictions(items, workers=2, progress=False)
    assert [s.ex for s in s1] == [s.ex for s in s2] == [True, True, False]
    assert serial.ex == parallel.ex == pytest.approx(200 / 3)
    assert serial.by_hardness == {"easy": {"ex": 100.0, "n": 2}, "medium": {"ex": 0.0, "n": 1}}


def test_exact_match_normalisation():
    assert exact_match("select name from SINGER where age>3;", "SELECT name FROM singer WHERE age > 3")
    assert exact_match("SELECT count( * ) FROM t", "SELECT count(*) FROM t")
    assert not exact_match("SELECT name FROM singer WHERE name = 'ann'", "SELECT name FROM singer WHERE name = 'Ann'")


def test_unknown_comparator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown comparator 'suite'.*bird"):
        get_comparator("suite")
