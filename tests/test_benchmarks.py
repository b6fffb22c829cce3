"""Evaluation benchmarks: Spider-DK / Syn / Realistic and BIRD configs on format copies, the
text2sql-data loader (GeoQuery, Restaurants), and extra benchmarks scored after training."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from hydra.utils import instantiate

from kdlight.eval.sql.execution import execute
from kdlight.tasks.text2sql import PromptParts, Text2SQLDataSource, Text2SQLTask
from kdlight.tasks.text2sql.spider import load_examples
from tests.benchmark_fixtures import make_benchmarks
from tests.conftest import SHARED_DATA
from tests.test_configs import compose_cfg

N = 12
BENCHMARKS = ["spider_dev", "spider_dk", "spider_syn", "spider_realistic", "bird", "bird_evidence"]


@pytest.fixture(scope="module")
def data_dir(sqlgen_root, tmp_path_factory) -> Path:
    return make_benchmarks(sqlgen_root, tmp_path_factory.mktemp("benchmarks"), n=N)


def benchmark(name: str, data_dir: Path, tmp_path: Path, *overrides: str) -> Text2SQLTask:
    cfg = compose_cfg([f"+benchmark@benchmarks.{name}={name}", f"paths.data_dir={data_dir}", *overrides], tmp_path)
    return instantiate(cfg.benchmarks[name], _convert_="object")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_config_loads_its_format_without_dropping_anything(name, data_dir, tmp_path, caplog):
    task = benchmark(name, data_dir, tmp_path)
    examples = task.load("eval")
    assert task.load("train") == [] and len(examples) == N  # evaluation only
    assert "without a database" not in caplog.text and "not in tables.json" not in caplog.text
    assert all(e.meta["db_path"] is not None and Path(e.meta["db_path"]).exists() for e in examples)


def test_spider_dk_searches_its_own_databases_before_spiders(data_dir, tmp_path):
    examples = benchmark("spider_dk", data_dir, tmp_path).load("eval")
    for example in examples:
        own, parts = example.meta["db_id"].startswith("new_"), Path(example.meta["db_path"]).parts
        assert ("spider-dk" in parts) == own and ("spider" in parts) == (not own)
    assert any(e.meta["db_id"].startswith("new_") for e in examples)


def test_spider_syn_asks_the_synonym_question(data_dir, tmp_path):
    questions = [e.meta["question"] for e in benchmark("spider_syn", data_dir, tmp_path).load("eval")]
    originals = json.loads((data_dir / "text2sql" / "spider-syn" / "dev.json").read_text())
    assert questions == [o["SpiderSynQuestion"] for o in originals] != [o["SpiderQuestion"] for o in originals]


def test_bird_with_and_without_evidence_and_ex_by_difficulty(data_dir, tmp_path):
    plain, with_evidence = benchmark("bird", data_dir, tmp_path), benchmark("bird_evidence", data_dir, tmp_path)
    raw = json.loads((data_dir / "text2sql" / "bird" / "dev.json").read_text())
    examples = plain.load("eval")
    for a, b, item in zip(examples, with_evidence.load("eval"), raw):
        assert item["evidence"] not in a.prompt
        assert b.prompt.rstrip().endswith(f"{item['evidence']}\n{item['question']}")
        assert a.target == item["SQL"] and a.group == item["difficulty"]
    scorer = plain.scorer()
    assert scorer.comparator == "bird" and scorer.table_metrics == ("ex",) and scorer.limits.timeout_s == 30.0
    predictions = [e.target for e in examples]
    predictions[0] = "SELECT 1"  # one wrong answer
    scores = scorer.score(examples, predictions, "bird")
    levels = {e.group for e in examples}
    assert scores.metrics["bird/ex"] == pytest.approx(100 * (N - 1) / N)
    assert {f"bird/ex/{level}" for level in levels} <= set(scores.metrics)
    assert scores.metrics[f"bird/ex/{examples[0].group}"] < 100 and len(scores.records) == N
    assert scorer.check(examples, "bird") == []  # no TS note: BIRD does not report TS


def test_benchmarks_are_scored_with_the_runs_settings_unless_they_override_them(data_dir, tmp_path):
    dk = benchmark("spider_dk", data_dir, tmp_path, "data.task.scorer.comparator=spider",
                   "data.task.scorer.limits.timeout_s=9", "data.task.scorer.workers=1")
    bird = benchmark("bird", data_dir, tmp_path, "data.task.scorer.comparator=spider")
    assert (dk.scorer().comparator, dk.scorer().limits.timeout_s, dk.scorer().workers) == ("spider", 9.0, 1)
    assert bird.scorer().comparator == "bird"  # BIRD's own comparator wins, and reports name it
    # The prompt follows the run's data, so a model is scored on the prompt format it learnt.
    bare = benchmark("spider_dev", data_dir, tmp_path, "data.task.prompt.foreign_keys=false")
    assert "foreign keys :" not in bare.load("eval")[0].prompt


def test_a_benchmark_whose_databases_are_all_missing_fails_before_training(data_dir, tmp_path):
    from kdlight.cli.train import train

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    shutil.rmtree(copy / "text2sql" / "bird" / "dev_databases")
    (copy / "text2sql" / "bird" / "dev_databases").mkdir()
    cfg = compose_cfg(["debug=fdr", f"paths.data_dir={copy}", "+benchmark@benchmarks.bird=bird"], tmp_path)
    expected = (r"benchmark 'bird': none of its 8 questions has a database .*bird \(databases under dev_databases\)\] "
                r"\(settings: benchmarks.bird.source")
    with pytest.raises(ValueError, match=expected):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


def text2sql_data_fixture(folder: Path) -> tuple[Path, Path]:
    """A two-query dataset in the text2sql-data format over a one-table database."""
    folder.mkdir()
    db = folder / "towns.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE town (name TEXT PRIMARY KEY, state TEXT, people INT)")
        conn.executemany("INSERT INTO town VALUES (?, ?, ?)", [("austin", "texas", 900), ("dallas", "texas", 1300),
                                                              ("reno", "nevada", 250)])
    entries = [
        {"query-split": "train", "variables": [{"name": "state0", "example": "texas", "type": "state"}],
         "sql": ['SELECT TOWNalias0.NAME FROM TOWN AS TOWNalias0 WHERE TOWNalias0.STATE = "state0" ;'],
         "sentences": [{"text": "towns in state0", "variables": {"state0": "nevada"}, "question-split": "train"},
                       {"text": "which towns are in state0", "variables": {"state0": "texas"}, "question-split": "test"},
                       {"text": "list towns of state0", "variables": {}, "question-split": "dev"}]},
        {"query-split": "test", "variables": [{"name": "name1", "example": "austin", "type": "name"},
                                              {"name": "name10", "example": "reno", "type": "name"}],
         "sql": ['SELECT SUM( people ) FROM town WHERE name IN ( "name1" , "name10" )', "SELECT 0"],
         "sentences": [{"text": "people in name1 and name10", "variables": {"name1": "dallas", "name10": "reno"},
                        "question-split": "train"}]},
    ]
    (folder / "towns.json").write_text(json.dumps(entries))
    return folder / "towns.json", db


@pytest.mark.parametrize("split,train,evaluated", [("question", 2, 2), ("query", 3, 1)])
def test_text2sql_data_substitutes_variables_and_splits(tmp_path, split, train, evaluated):
    file, db = text2sql_data_fixture(tmp_path / "towns")
    source = Text2SQLDataSource(str(file), str(db), "towns", str(tmp_path / "cache"), split=split,
                                eval_splits=("test",) if split == "query" else ("dev", "test")).resolve()
    train_examples, _ = load_examples(source, source.train_file, PromptParts())
    eval_examples, _ = load_examples(source, source.eval_file, PromptParts())
    assert (len(train_examples), len(eval_examples)) == (train, evaluated)
    everything = {e.meta["question"]: e.target for e in train_examples + eval_examples}
    assert everything["towns in nevada"] == 'SELECT TOWNalias0.NAME FROM TOWN AS TOWNalias0 WHERE TOWNalias0.STATE = "nevada"'
    assert everything["list towns of texas"].endswith('"texas"')  # the entry's example value
    if split == "question":
        assert "people in dallas and reno" in everything  # name10 is not name1 followed by 0
        assert execute(db, everything["people in dallas and reno"]).rows == [(1550,)]
    schema = json.loads((Path(source.root) / "tables.json").read_text())[0]
    assert schema["table_names_original"] == ["town"] and schema["primary_keys"] == [1]


def test_text2sql_data_bad_input_names_file_and_key(tmp_path):
    file, db = text2sql_data_fixture(tmp_path / "towns")
    entries = json.loads(file.read_text())
    del entries[1]["sentences"]
    file.write_text(json.dumps(entries))
    with pytest.raises(KeyError, match=r"towns.json: entry 1 has no 'sentences'"):
        Text2SQLDataSource(str(file), str(db), "towns", str(tmp_path / "cache")).resolve()
    entries[1]["sentences"] = [{"variables": {}}]
    file.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"towns.json: entry 1, sentence 0: expected an object with a 'text'"):
        Text2SQLDataSource(str(file), str(db), "towns", str(tmp_path / "cache")).resolve()
    entries[1] = {**entries[0], "sql": [None]}
    file.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"towns.json: entry 1: 'sql' must be a non-empty list of queries"):
        Text2SQLDataSource(str(file), str(db), "towns", str(tmp_path / "cache")).resolve()
    file.write_text(json.dumps({"entries": entries}))
    with pytest.raises(ValueError, match=r"towns.json: expected a list of entries \(text2sql-data format\), got a JSON dict"):
        Text2SQLDataSource(str(file), str(db), "towns", str(tmp_path / "cache")).resolve()
    with pytest.raises(FileNotFoundError, match="database not found: .*nowhere.sqlite"):
        Text2SQLDataSource(str(file), str(tmp_path / "nowhere.sqlite"), "towns", str(tmp_path / "cache")).resolve()


GEOQUERY = SHARED_DATA / "text2sql" / "geoquery"
RESTAURANTS = SHARED_DATA / "text2sql" / "restaurants"


@pytest.mark.skipif(not GEOQUERY.exists(), reason="needs the real GeoQuery in ../shared/data")
def test_real_geoquery_and_restaurants_splits(tmp_path):
    cfg = compose_cfg([f"paths.data_dir={SHARED_DATA}", "data=geoquery"], tmp_path)
    task = instantiate(cfg.data, _convert_="object").task
    train, evaluate = task.load("train"), task.load("eval")
    assert (len(train), len(evaluate)) == (549, 328)
    names = {v["name"] for entry in json.loads((GEOQUERY / "geography.json").read_text()) for v in entry["variables"]}
    placeholder = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")  # e.g. state_name0
    for example in train + evaluate:
        assert not placeholder.search(example.meta["question"]) and not placeholder.search(example.target)
    failing = sum(not execute(e.meta["db_path"], e.target).ok for e in train + evaluate)
    assert failing == 5  # 872 of 877 gold queries execute (text2sql-data's known errors)
    cfg = compose_cfg([f"paths.data_dir={SHARED_DATA}", "data=restaurants"], tmp_path)
    task = instantiate(cfg.data, _convert_="object").task
    assert (len(task.load("train")), len(task.load("eval"))) == (340, 38)


def test_a_run_scores_extra_benchmarks_and_the_report_lays_them_out_like_kid(data_dir, tmp_path):
    from kdlight.cli.report import main as report
    from tests.helpers import multirun

    sweep = tmp_path / "sweep"
    multirun(sweep, ["debug=fdr", "method=sft,kid", f"paths.data_dir={data_dir}",
                     "+benchmark@benchmarks.spider_dk=spider_dk", "+benchmark@benchmarks.bird=bird",
                     "+benchmark@benchmarks.bird_evidence=bird_evidence"], tmp_path / "cache")
    metrics = json.loads(next(sweep.glob("0*/metrics.json")).read_text())
    assert [b["name"] for b in metrics["benchmarks"]] == ["sqlgen", "spider_dk", "bird", "bird_evidence"]
    bird = metrics["benchmarks"][2]
    assert (bird["prefix"], bird["metrics"], bird["settings"]["comparator"]) == ("bird", ["ex"], "bird")
    assert {"eval/ex", "spider_dk/ex", "spider_dk/ts", "bird/ex", "bird_evidence/ex"} <= set(metrics)
    assert metrics["spider_dk/n"] == metrics["bird/n"] == 8  # data.limit_eval (debug=fdr) applies to every set
    for name in ("spider_dk", "bird", "bird_evidence"):
        lines = next(sweep.glob(f"0*/predictions_{name}.jsonl")).read_text().splitlines()
        assert len(lines) == 8 and "ex" in json.loads(lines[0])

    report([str(sweep), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert ("| method | student | teacher | seeds | params | sqlgen EX | sqlgen TS | spider_dk EX | spider_dk TS "
            "| bird EX | bird_evidence EX | average | Δ vs sft | step (s) | step vs sft |") in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| kid")}
    assert "kid" in rows and rows["kid"].rstrip(" |").split(" | ")[-1].endswith("x")  # latency vs SFT
    assert "- bird: comparator bird" in text and "- spider_dk: comparator test_suite" in text


def test_a_missing_benchmark_copy_fails_before_training_and_names_the_benchmark(tmp_path):
    from kdlight.cli.train import train

    cfg = compose_cfg(["debug=fdr", "+benchmark@benchmarks.spider_dk=spider_dk",
                       f"paths.data_dir={tmp_path / 'nowhere'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match=r"benchmark 'spider_dk': .*nowhere.*benchmarks.spider_dk.source; shared copies: KDLIGHT_DATA"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
