"""Data: the generator, the Spider-format loader, the prompt, tokenisation and batches."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kdlight.data.batch import collate
from kdlight.data.module import DataSpec, TaskDataModule
from kdlight.eval.sql.execution import execute
from kdlight.tasks.text2sql import Text2SQLTask
from kdlight.tasks.text2sql.spider import PromptParts, SpiderSource, build_prompt, load_examples, load_schemas
from kdlight.tasks.text2sql.sqlgen import GeneratorSpec, ensure_generated
from tests.conftest import SPIDER


def test_generator_is_deterministic_and_cached(tmp_path):
    spec = GeneratorSpec(n_train=60, n_dev=20, seed=3)
    a = ensure_generated(spec, tmp_path / "a")
    b = ensure_generated(spec, tmp_path / "b")
    for name in ("train.json", "dev.json", "tables.json"):
        assert (a / name).read_text() == (b / name).read_text()
    stamp = (a / "dev.json").stat().st_mtime_ns
    assert ensure_generated(spec, tmp_path / "a") == a and (a / "dev.json").stat().st_mtime_ns == stamp
    other = ensure_generated(GeneratorSpec(n_train=60, n_dev=20, seed=4), tmp_path / "a")
    assert other != a and (other / "dev.json").read_text() != (a / "dev.json").read_text()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".sqlgen-")]  # no staging left


def test_generated_data_is_spider_format_and_executes(sqlgen_root):
    train = json.loads((sqlgen_root / "train.json").read_text())
    dev = json.loads((sqlgen_root / "dev.json").read_text())
    assert (len(train), len(dev)) == (200, 40)
    assert set(Counter(e["hardness"] for e in dev)) == {"easy", "medium", "hard", "extra"}
    assert not {e["query"] for e in dev} & {e["query"] for e in train}  # dev SQL is new
    schemas = load_schemas(sqlgen_root / "tables.json")
    for example in train + dev:
        assert example["db_id"] in schemas
        db = sqlgen_root / "database" / example["db_id"] / f"{example['db_id']}.sqlite"
        assert execute(db, example["query"]).ok, example
    suite = list((sqlgen_root / "database" / dev[0]["db_id"]).glob("*.sqlite"))
    assert len(suite) == 3  # the main database and two test-suite variants


def test_prompt_parts_are_switchable(sqlgen_root):
    examples, _ = load_examples(SpiderSource(str(sqlgen_root)), "dev.json", PromptParts())
    meta = examples[0].meta
    schema = load_schemas(sqlgen_root / "tables.json")[meta["db_id"]]
    full = build_prompt(schema, meta["question"], meta["db_path"], PromptParts())
    assert full == examples[0].prompt
    assert full.startswith("database schema :\ntable ") and full.endswith(meta["question"] + "\n")
    assert "primary key" in full and "foreign keys :" in full and "values :" in full
    bare = build_prompt(schema, meta["question"], meta["db_path"],
                        PromptParts(column_types=False, primary_keys=False, sample_values=False,
                                    foreign_keys=False, matched_contents=False))
    assert "primary key" not in bare and "foreign keys" not in bare and "values :" not in bare
    assert "( " not in bare and len(bare) < len(full)
    no_schema = build_prompt(schema, meta["question"], meta["db_path"], PromptParts(schema=False))
    assert "table " not in no_schema and "foreign keys" not in no_schema and "database schema" not in no_schema
    assert no_schema.endswith(meta["question"] + "\n") and no_schema in full  # the tail of the full prompt


def test_matched_contents_name_values_found_in_the_question(sqlgen_root):
    examples, _ = load_examples(SpiderSource(str(sqlgen_root)), "train.json", PromptParts())
    with_text_filter = [e for e in examples if "= '" in e.target]
    assert with_text_filter
    for example in with_text_filter[:10]:
        value = example.target.split("= '")[1].split("'")[0]
        assert "matched contents :" in example.prompt and f"( {value} )" in example.prompt


def test_loader_reports_missing_databases_and_unknown_schemas(sqlgen_root, tmp_path):
    data = json.loads((sqlgen_root / "dev.json").read_text())[:5]
    data[0]["db_id"] = "not_in_tables"
    (tmp_path / "dev.json").write_text(json.dumps(data))
    (tmp_path / "tables.json").write_text((sqlgen_root / "tables.json").read_text())
    (tmp_path / "database").mkdir()  # schemas known, databases absent
    examples, report = load_examples(SpiderSource(str(tmp_path)), "dev.json", PromptParts())
    assert report.n_examples == 4 and len(examples) == 4
    assert report.missing_schema == {"not_in_tables": 1}
    assert sum(report.missing_database.values()) == 4 and all(e.meta["db_path"] is None for e in examples)
    assert "4 without a database" in report.summary() and "not_in_tables" in report.summary()


def test_loader_names_the_file_and_key_on_bad_input(sqlgen_root, tmp_path):
    (tmp_path / "tables.json").write_text((sqlgen_root / "tables.json").read_text())
    (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "concert_hall", "question": "q"}]))
    with pytest.raises(KeyError, match=r"dev.json: example 0 has no 'query'"):
        load_examples(SpiderSource(str(tmp_path)), "dev.json", PromptParts())
    (tmp_path / "dev.json").write_text('[{"db_id": 1,\n oops}]')
    with pytest.raises(ValueError, match=r"dev.json: not valid JSON \(line 2\)"):
        load_examples(SpiderSource(str(tmp_path)), "dev.json", PromptParts())
    with pytest.raises(FileNotFoundError, match="source.root must point at your copy"):
        SpiderSource(str(tmp_path / "nowhere")).resolve()


def test_batches_put_loss_on_sql_tokens_only(sqlgen_root, tokenizer, caplog):
    task = Text2SQLTask(SpiderSource(str(sqlgen_root)), PromptParts(sample_values=False))
    dm = TaskDataModule(DataSpec(task, batch_size=4, max_prompt_tokens=64), "sqlgen")
    dm.connect(tokenizer)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.labeled.all()
    for i in range(batch.size):
        target = batch.target_ids[i][batch.target_mask[i].bool()].tolist()
        assert target[-1] == tokenizer.eos_token_id
        example = dm.train_examples[int(batch.index[i])]
        assert tokenizer.decode(target, skip_special_tokens=True) == example.target  # exactly the SQL
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        assert len(prompt) <= 64  # long prompts lose their start, keep the question
        assert tokenizer.decode(prompt, skip_special_tokens=True).endswith(example.meta["question"] + "\n")
    assert "train: 200 of 200 prompts cut to 64 tokens" in caplog.text  # every cut is counted and logged


def test_collate_pads_prompts_left_and_targets_right():
    batch = collate([[5, 6, 7], [8], [4]], [[9, 2], [10, 11, 2], None], [0, 1, 2], pad_id=0)
    assert batch.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 4]]
    assert batch.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert batch.target_ids.tolist() == [[9, 2, 0], [10, 11, 2], [0, 0, 0]]
    assert batch.target_mask.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]  # an unlabeled input: no target
    assert batch.labeled.tolist() == [True, True, False]


spider = pytest.mark.skipif(not SPIDER.exists(), reason="real Spider copy not available (../shared/data)")


@spider
def test_real_spider_loads_and_reports_missing_databases():
    source = SpiderSource(str(SPIDER))
    dev, dev_report = load_examples(source, "dev.json", PromptParts(sample_values=False, matched_contents=False))
    train, train_report = load_examples(source, "train.json", PromptParts(sample_values=False, matched_contents=False))
    assert dev_report.n_examples == len(dev) == 1034 and len(train) == 7000
    assert dev_report.missing_database == {"wta_1": 62}
    assert train_report.missing_database == {"baseball_1": 82, "soccer_1": 14} or \
        set(train_report.missing_database) == {"baseball_1", "soccer_1"}
    assert sum(train_report.missing_database.values()) == 96


@spider
def test_every_real_spider_dev_gold_query_with_a_database_executes():
    dev, _ = load_examples(SpiderSource(str(SPIDER)), "dev.json", PromptParts(sample_values=False, matched_contents=False))
    failures = [(e.meta["db_id"], e.target, r.error) for e in dev if e.meta["db_path"] is not None
                for r in [execute(e.meta["db_path"], e.target, timeout_s=10)] if not r.ok]
    assert failures == []
    assert sum(e.meta["db_path"] is not None for e in dev) == 972


@spider
def test_real_spider_prompt_has_codes_layout():
    dev, _ = load_examples(SpiderSource(str(SPIDER)), "dev.json", PromptParts())
    prompt = dev[0].prompt  # concert_singer: "How many singers do we have?"
    assert "table singer , columns = [ singer.Singer_ID ( number | primary key | values : 1 , 2 )" in prompt
    assert "singer_in_concert.Singer_ID = singer.Singer_ID" in prompt
    assert prompt.endswith("How many singers do we have?\n")
