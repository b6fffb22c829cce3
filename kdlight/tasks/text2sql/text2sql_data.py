"""GeoQuery, Restaurants and the other text2sql-data datasets (Finegan-Dollak et al., ACL 2018).

Format (jkkummerfeld/text2sql-data): one JSON list per dataset; each entry is one SQL query with
`sql` (equivalent variants; the first is used), `query-split`, and `sentences`, each with `text`,
`variables` (placeholder -> value) and `question-split`. Placeholders are substituted into both
the question and the SQL. Two splits: `question` (a query's paraphrases may be on both sides) and
`query` (every paraphrase of a query on one side: harder). Restaurants' splits are folds "0".."9".

The dataset is converted once into a Spider-format folder in the cache (examples, a `tables.json`
read from the SQLite schema, and a link to the user's database), so prompts, training and
evaluation are exactly those of every other text-to-SQL benchmark. The conversion checks every
gold query against the database and reports the ones that fail (they stay in: a failing gold
counts as wrong for every method alike, and the count is printed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from kdlight.eval.sql.execution import execute
from kdlight.io import UnreadableDatabase, read_json, sqlite_read_only, staging_dir
from kdlight.tasks.text2sql.spider import SpiderSource

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1
SPLIT_KINDS = ("question", "query")


@dataclass(frozen=True)
class Text2SQLDataSource:
    """A text2sql-data dataset, converted to Spider format on first use.

    Attributes:
        file: the dataset JSON (e.g. `geography.json`).
        database: its SQLite database.
        db_id: the name the database gets in prompts and tables.
        split: `question` or `query`.
        eval_splits: split names evaluated on (GeoQuery: dev and test; Restaurants: one fold).
        train_splits: split names trained on; None: every split not in `eval_splits`.
        cache_dir: where the converted copy is written.
    """

    file: str
    database: str
    db_id: str
    cache_dir: str
    split: str = "question"
    eval_splits: tuple[str, ...] = ("dev", "test")
    train_splits: tuple[str, ...] | None = None

    def resolve(self) -> SpiderSource:
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"text2sql-data split must be one of {SPLIT_KINDS}, got '{self.split}'")
        for path, what in ((self.file, "dataset file"), (self.database, "database")):
            if not Path(path).is_file():
                raise FileNotFoundError(f"text2sql-data {what} not found: {path} "
                                        f"(source.{what.split()[-1]} must point at your copy)")
        folder = Path(self.cache_dir) / "text2sql_data" / f"{self.db_id}-{self._fingerprint()}"
        if not (folder / "done").exists():
            self._convert(folder)
        return SpiderSource(str(folder), train_file="train.json", eval_file="eval.json")

    def _fingerprint(self) -> str:
        settings = json.dumps([CONVERSION_VERSION, self.split, sorted(self.eval_splits),
                               sorted(self.train_splits) if self.train_splits is not None else None])
        digest = hashlib.sha256(settings.encode())
        for path in (self.file, self.database):
            digest.update(Path(path).read_bytes())
        return digest.hexdigest()[:12]

    def _convert(self, folder: Path) -> None:
        entries = _read_entries(Path(self.file))
        train, evaluate = [], []
        for entry in entries:
            for sentence in entry["sentences"]:
                name = str(entry["query-split"] if self.split == "query" else sentence["question-split"])
                question, query = substitute(entry, sentence)
                example = {"db_id": self.db_id, "question": question, "query": query, "split": name}
                if name in self.eval_splits:
                    evaluate.append(example)
                elif self.train_splits is None or name in self.train_splits:
                    train.append(example)
        # Built aside and renamed in whole; if another process finished the same conversion
        # first, its copy is kept.
        with staging_dir(folder, replace=False) as staging:
            (staging / "database" / self.db_id).mkdir(parents=True)
            database = staging / "database" / self.db_id / f"{self.db_id}.sqlite"
            database.symlink_to(Path(self.database).resolve())  # the user's copy, never duplicated
            (staging / "tables.json").write_text(json.dumps([sqlite_schema(database, self.db_id)], indent=1))
            (staging / "train.json").write_text(json.dumps(train, indent=1))
            (staging / "eval.json").write_text(json.dumps(evaluate, indent=1))
            failing = [e["query"] for e in train + evaluate if not execute(database, e["query"], 10.0, 10**6).ok]
            (staging / "done").write_text(json.dumps({"train": len(train), "eval": len(evaluate),
                                                      "gold_failing": len(failing)}))
        log.info(f"{self.file}: {len(train)} train / {len(evaluate)} eval questions ({self.split} split, eval "
                 f"{list(self.eval_splits)}); {len(failing)} gold queries fail to execute and count as wrong")


def _read_entries(path: Path) -> list[dict]:
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of entries (text2sql-data format), got a JSON "
                         f"{type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {i} is a JSON {type(entry).__name__}, expected an object")
        for key in ("sql", "sentences", "query-split"):
            if key not in entry:
                raise KeyError(f"{path}: entry {i} has no '{key}' (text2sql-data format; keys: {sorted(entry)})")
        if not entry["sql"] or not all(isinstance(q, str) for q in entry["sql"]):
            raise ValueError(f"{path}: entry {i}: 'sql' must be a non-empty list of queries")
        for j, sentence in enumerate(entry["sentences"]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("text"), str):
                raise ValueError(f"{path}: entry {i}, sentence {j}: expected an object with a 'text'")
    return entries


def substitute(entry: dict, sentence: dict) -> tuple[str, str]:
    """The question and the first SQL variant with every placeholder replaced by its value: the
    sentence's own values, else the entry's example values."""
    values = {v["name"]: v["example"] for v in entry.get("variables", [])} | sentence.get("variables", {})
    question, query = sentence["text"], entry["sql"][0]
    for name in sorted(values, key=len, reverse=True):  # `city_name10` before `city_name1`
        pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")
        question = pattern.sub(lambda _m, v=values[name]: v, question)
        query = pattern.sub(lambda _m, v=values[name]: v, query)
    return question, query.rstrip(" ;")


def sqlite_schema(database: Path, db_id: str) -> dict:
    """A Spider `tables.json` entry read from an SQLite database (declared types lower-cased)."""
    try:
        return _sqlite_schema(database, db_id)
    except UnreadableDatabase as error:  # a data error; the message names the file
        raise ValueError(str(error)) from error
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{Path(database).resolve()}: cannot read its schema ({error})") from error


def _sqlite_schema(database: Path, db_id: str) -> dict:
    with sqlite_read_only(database) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
        columns, types, primary, index = [[-1, "*"]], ["text"], [], {}
        for ti, table in enumerate(tables):
            for _, name, declared, _, _, pk in conn.execute(f'PRAGMA table_info("{table}")'):
                index[(table.lower(), name.lower())] = len(columns)
                columns.append([ti, name])
                types.append((declared or "text").lower())
                if pk:
                    primary.append(len(columns) - 1)
        foreign = []
        for table in tables:
            for row in conn.execute(f'PRAGMA foreign_key_list("{table}")'):
                source, target = (table.lower(), row[3].lower()), (row[2].lower(), (row[4] or "").lower())
                if source in index and target in index:
                    foreign.append([index[source], index[target]])
    return {"db_id": db_id, "table_names_original": tables, "table_names": tables,
            "column_names_original": columns, "column_names": columns, "column_types": types,
            "primary_keys": primary, "foreign_keys": foreign}
