"""Execution accuracy: comparator semantics, safety of executing model output, time limits."""

from __future__ import annotations

import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kdlight.data.example import Example
from kdlight.eval.sql import ExecutionLimits, SqlScorer
from kdlight.eval.sql.comparators import get_comparator, remove_distinct, repair_operators
from kdlight.eval.sql.exact_match import exact_match, normalize_sql
from kdlight.eval.sql.execution import execute
from kdlight.eval.sql.scorer import ScoreItem, score_items, score_one


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


def test_never_ending_query_is_interrupted_by_the_time_limit(db):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    item = ScoreItem(endless, "SELECT count(*) FROM singer", str(db))
    with ThreadPoolExecutor(1) as pool:  # a broken limit would hang: fail instead (no timing is asserted)
        score = pool.submit(score_one, item, "test_suite", ExecutionLimits(timeout_s=0.5)).result(timeout=300)
    assert not score.ex and score.pred_error == "timeout after 0.5s"


def test_row_cap_counts_as_error(db):
    result = execute(db, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
                     timeout_s=5, max_rows=1000)
    assert result.error == "more than 1000 rows"


def example(gold: str, db: Path | None, group: str | None = None, suite: tuple = ()) -> Example:
    return Example("x", "question", gold, group, {"db_path": str(db) if db else None, "suite": suite})


def test_missing_database_is_unexecutable_not_an_exception_and_lowers_the_ceiling(db):
    examples = [example("SELECT 1", None), example("SELECT name FROM singer", db)]
    scorer = SqlScorer(workers=1)
    scores = scorer.score(examples, ["SELECT 1", "SELECT name FROM singer"], "eval")
    m = scores.metrics
    assert (m["eval/n_unexecutable"], m["eval/ex"], m["eval/em"], m["eval/ceiling"]) == (1, 50.0, 100.0, 50.0)
    assert "ceiling" in scores.table_metrics  # the table shows how much could be executed at all
    assert scorer.check(examples, "music") == [
        "'music': 1 of 2 questions have no database and count as wrong: the ceiling is 50.0%",
        "'music': TS equals EX: each database folder holds one database (no test-suite databases)"]
    with pytest.raises(ValueError, match="none of its 2 questions has a database"):
        SqlScorer().check([example("SELECT 1", None)] * 2, "bird")


def test_an_empty_prediction_is_wrong_even_when_the_gold_result_is_empty(db):
    gold = "SELECT name FROM singer WHERE age > 100"  # no rows
    assert execute(db, gold).rows == []
    for prediction in ("", "   \n"):
        score = score_one(ScoreItem(prediction, gold, str(db)), "test_suite", ExecutionLimits())
        assert not score.ex and not score.ts and score.pred_error == "empty prediction"
    assert score_one(ScoreItem("SELECT name FROM singer WHERE age > 200", gold, str(db)), "test_suite",
                     ExecutionLimits()).ex  # a real query with the same (empty) result is right


def test_string_literals_are_compared_as_written(db):
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO singer VALUES (5, 'Joe Sharp', 52, 'Peru', 3.0)")
    conn.commit()
    conn.close()
    gold = "SELECT id FROM singer WHERE name = 'Joe Sharp'"
    assert execute(db, gold).rows == [(5,)]
    for comparator in ("test_suite", "spider", "bird"):  # two spaces select nothing: wrong everywhere
        assert not same(comparator, "SELECT id FROM singer WHERE name = 'Joe  Sharp'", gold, db), comparator
        assert same(comparator, "SELECT  id  FROM singer\nWHERE name = 'Joe Sharp'", gold, db), comparator
    assert remove_distinct("SELECT DISTINCT a FROM t WHERE b = 'x  y'") == "SELECT a FROM t WHERE b = 'x  y'"
    assert not exact_match("SELECT a FROM t WHERE b = 'x  y'", "SELECT a FROM t WHERE b = 'x y'")
    assert normalize_sql("select  a\nFROM t where b = 'x  y'") == "select a from t where b = 'x  y'"


def test_parallel_scoring_matches_serial(db):
    golds = ["SELECT name FROM singer", "SELECT count(*) FROM singer", "SELECT max(age) FROM singer"]
    preds = ["SELECT name FROM singer", "SELECT count(*) FROM singer WHERE age > 1", "SELECT min(age) FROM singer"]
    items = [ScoreItem(p, g, str(db)) for p, g in zip(preds, golds)]
    serial = score_items(items, workers=1, progress=False)
    parallel = score_items(items, workers=2, progress=False, parallel_from=2)  # three items to the workers
    assert [s.ex for s in serial] == [s.ex for s in parallel] == [True, True, False]


def test_scores_by_group_with_macro_and_micro_averages(db):
    golds = ["SELECT name FROM singer", "SELECT count(*) FROM singer", "SELECT max(age) FROM singer"]
    preds = ["SELECT name FROM singer", "SELECT count(*) FROM singer WHERE age > 1", "SELECT min(age) FROM singer"]
    examples = [example(g, db, group) for g, group in zip(golds, ["easy", "easy", "medium"])]
    scores = SqlScorer(workers=1).score(examples, preds, "eval")
    m = scores.metrics
    assert (m["eval/ex/easy"], m["eval/n/easy"], m["eval/ex/medium"], m["eval/n/medium"]) == (100.0, 2, 0.0, 1)
    assert m["eval/ex_macro"] == pytest.approx(50.0)  # each group counts once
    assert m["eval/ex_micro"] == m["eval/ex"] == pytest.approx(200 / 3)  # each question counts once
    assert [r["group"] for r in scores.records] == ["easy", "easy", "medium"]
    assert [r["ex"] for r in scores.records] == [True, True, False] and scores.table_metrics == ("ex", "ts")


def test_exact_match_normalisation():
    assert exact_match("select name from SINGER where age>3;", "SELECT name FROM singer WHERE age > 3")
    assert exact_match("SELECT count( * ) FROM t", "SELECT count(*) FROM t")
    assert not exact_match("SELECT name FROM singer WHERE name = 'ann'", "SELECT name FROM singer WHERE name = 'Ann'")


def test_unknown_comparator_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown comparator 'suite'.*bird"):
        get_comparator("suite")
