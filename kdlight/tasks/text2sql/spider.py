"""Spider-format text-to-SQL data: examples, schemas and the CodeS-style schema prompt.

Format (docs/tasks.md, Spider family): `<split>.json` with `db_id`, a question field and `query`;
`tables.json` with Spider schemas; databases at `<db_root>/<db_id>/<db_id>.sqlite`. A dataset may
have several database roots, searched in order (Spider-DK's own databases before Spider's), and
several schema files. The field names are configurable, which makes Spider-Syn
(`SpiderSynQuestion`) and BIRD (`SQL`, `difficulty`, `evidence`) the same loader.

The prompt follows CodeS as used by KID: schema per table (columns with type, key and sample
values), foreign keys, database values matched in the question, then the question. Every part can
be switched off (`PromptParts`).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from kdlight.data.example import Example
from kdlight.io import UnreadableDatabase, open_sqlite_read_only, read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptParts:
    """Which parts of the CodeS schema prompt to include.

    Attributes:
        schema: the table lines and foreign keys. A model trained and evaluated on one database
            (GeoQuery, Restaurants) sees the same schema in every prompt and can do without it.
        column_types: `( int | ... )` after each column.
        primary_keys: mark primary-key columns.
        sample_values: up to `values_per_column` distinct values read from the database.
        foreign_keys: the `foreign keys :` section.
        matched_contents: database values that occur in the question.
        values_per_column: how many sample values (CodeS uses 2).
        max_value_chars: longer values are skipped as samples.
    """

    schema: bool = True
    column_types: bool = True
    primary_keys: bool = True
    sample_values: bool = True
    foreign_keys: bool = True
    matched_contents: bool = True
    values_per_column: int = 2
    max_value_chars: int = 25


@dataclass
class LoadReport:
    """What a loader could and could not use, so nothing is dropped silently."""

    file: str
    n_examples: int = 0
    missing_database: Counter = field(default_factory=Counter)
    missing_schema: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.file}: {self.n_examples} examples"
        if self.missing_database:
            n = sum(self.missing_database.values())
            text += f"; {n} without a database (cannot be executed): {dict(self.missing_database)}"
        if self.missing_schema:
            n = sum(self.missing_schema.values())
            text += f"; {n} skipped, db_id not in tables.json: {dict(self.missing_schema)}"
        return text


@dataclass(frozen=True)
class SpiderSource:
    """Where a Spider-format dataset lives.

    Attributes:
        root: dataset folder; relative paths below are resolved against it (absolute ones, e.g.
            Spider's databases for Spider-DK, are used as they are).
        train_file: training split (e.g. `train.json`); None for an evaluation-only benchmark.
        eval_file: evaluation split (e.g. `dev.json`).
        tables_file: Spider schemas; a list is merged, the first file naming a db_id wins.
        db_roots: database folders searched in order for `<db_id>/<db_id>.sqlite`.
        question_field: the example key holding the question (`SpiderSynQuestion` for Spider-Syn).
        query_field: the key holding the gold SQL (`SQL` in BIRD).
        hardness_field: the key holding the difficulty EX is broken down by (`difficulty` in BIRD).
        evidence_field: BIRD's external knowledge; when set, it is put before the question.
    """

    root: str
    train_file: str | None = "train.json"
    eval_file: str = "dev.json"
    tables_file: str | tuple[str, ...] = "tables.json"
    db_roots: tuple[str, ...] = ("database",)
    question_field: str = "question"
    query_field: str = "query"
    hardness_field: str = "hardness"
    evidence_field: str | None = None

    def resolve(self) -> SpiderSource:
        if not Path(self.root).is_dir():
            raise FileNotFoundError(f"Spider-format dataset folder not found: {self.root} "
                                    "(its source.root must point at your copy)")
        return self

    def path(self, name: str) -> Path:
        return Path(self.root) / name


def load_examples(source: SpiderSource, file: str, parts: PromptParts) -> tuple[list[Example], LoadReport]:
    """Read one split, attach databases and prompts, and report what could not be used.

    Each example's `meta` holds `db_id`, `db_path` (None when the database is missing: such an
    example can still be trained on, the schema comes from tables.json, but not executed),
    `suite` (every database of its test suite, the main one first) and the raw `question`;
    `group` is its difficulty (Spider hardness, BIRD difficulty) when the data has one.
    """
    source = source.resolve()
    tables = (source.tables_file,) if isinstance(source.tables_file, str) else tuple(source.tables_file)
    schemas: dict[str, dict] = {}
    for tables_file in reversed(tables):  # the first file wins
        schemas |= load_schemas(source.path(tables_file))
    path = source.path(file)
    raw = read_json(path)
    if not isinstance(raw, list):
        keys = f" (keys: {sorted(raw)[:8]})" if isinstance(raw, dict) else ""
        raise ValueError(f"{path}: expected a list of examples, got a JSON {type(raw).__name__}{keys}")
    report = LoadReport(str(path))
    examples = []
    for i, item in enumerate(raw):
        _check_example(item, i, path, source)
        db_id = item["db_id"]
        if db_id not in schemas:
            report.missing_schema[db_id] += 1
            continue
        db_path = find_database(source, db_id)
        if db_path is None:
            report.missing_database[db_id] += 1
        question = item[source.question_field]
        if source.evidence_field and item[source.evidence_field]:
            question = f"{item[source.evidence_field]}\n{question}"  # BIRD with evidence: knowledge first
        meta = {"db_id": db_id, "db_path": str(db_path) if db_path else None,
                "suite": tuple(str(p) for p in test_suite(db_path)), "question": question}
        prompt = build_prompt(schemas[db_id], question, db_path, parts)
        examples.append(Example(str(i), prompt, item[source.query_field], item.get(source.hardness_field), meta))
    report.n_examples = len(examples)
    return examples, report


def _check_example(item: object, i: int, path: Path, source: SpiderSource) -> None:
    """Each example is an object whose fields hold text (BIRD's evidence may be empty or null)."""
    if not isinstance(item, dict):
        raise ValueError(f"{path}: example {i} is a JSON {type(item).__name__}, expected an object")
    for key in ("db_id", source.question_field, source.query_field, source.evidence_field):
        if key is None:
            continue
        if key not in item:
            raise KeyError(f"{path}: example {i} has no '{key}' (keys: {sorted(item)})")
        if not isinstance(item[key], str) and not (key == source.evidence_field and item[key] is None):
            found = "null" if item[key] is None else type(item[key]).__name__
            raise ValueError(f"{path}: example {i}: '{key}' must be text, got {found}")


def find_database(source: SpiderSource, db_id: str) -> Path | None:
    for root in source.db_roots:
        candidate = source.path(root) / db_id / f"{db_id}.sqlite"
        if candidate.exists():
            return candidate
    return None


def test_suite(db_path: Path | None) -> list[Path]:
    """All databases in the folder of `db_path`, the main one first."""
    if db_path is None:
        return []
    others = sorted(p for p in db_path.parent.glob("*.sqlite") if p != db_path)
    return [db_path, *others]


SCHEMA_KEYS = ("db_id", "table_names_original", "column_names_original", "column_types", "primary_keys",
               "foreign_keys")


def load_schemas(path: Path) -> dict[str, dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"schema file not found: {path}")
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of database schemas, got a JSON {type(entries).__name__}")
    for i, entry in enumerate(entries):
        missing = [k for k in SCHEMA_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            name = entry.get("db_id", "?") if isinstance(entry, dict) else type(entry).__name__
            raise KeyError(f"{path}: schema {i} ({name}) has no {missing} (Spider tables.json format)")
    return {entry["db_id"]: entry for entry in entries}


def build_prompt(schema: dict, question: str, db_path: Path | None, parts: PromptParts) -> str:
    """The CodeS prompt: schema, foreign keys, matched contents, question."""
    lines = ["database schema :"] if parts.schema else []
    values = _column_values(str(db_path), parts.values_per_column, parts.max_value_chars) if db_path else {}
    tables = schema["table_names_original"]
    primary = set(schema["primary_keys"]) if parts.primary_keys else set()
    for ti, table in enumerate(tables if parts.schema else []):
        cols = []
        for ci, (owner, col) in enumerate(schema["column_names_original"]):
            if owner != ti:
                continue
            notes = []
            if parts.column_types:
                notes.append(schema["column_types"][ci])
            if ci in primary:
                notes.append("primary key")
            sample = values.get((table.lower(), col.lower()), [])
            if parts.sample_values and sample:
                notes.append("values : " + " , ".join(sample))
            cols.append(f"{table}.{col}" + (f" ( {' | '.join(notes)} )" if notes else ""))
        lines.append(f"table {table} , columns = [ {' , '.join(cols)} ]")
    if parts.schema and parts.foreign_keys and schema["foreign_keys"]:
        lines.append("foreign keys :")
        names = schema["column_names_original"]
        for a, b in schema["foreign_keys"]:
            lines.append(f"{tables[names[a][0]]}.{names[a][1]} = {tables[names[b][0]]}.{names[b][1]}")
    if parts.matched_contents and db_path is not None:
        matched = match_contents(str(db_path), question)
        if matched:
            lines.append("matched contents :")
            lines += [f"{t}.{c} ( {v} )" for t, c, v in matched]
    lines.append(question)
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=512)
def _column_values(db_path: str, per_column: int, max_chars: int) -> dict[tuple[str, str], list[str]]:
    """`SELECT DISTINCT col ... LIMIT k` for every column, skipping long values."""
    out = {}
    for table, column, values in _distinct_values(db_path, per_column * 4):
        kept = [str(v) for v in values if len(str(v)) <= max_chars and str(v).strip()]
        out[(table.lower(), column.lower())] = kept[:per_column]
    return out


@lru_cache(maxsize=512)
def _text_values(db_path: str, per_column: int = 2000) -> tuple[tuple[str, str, str], ...]:
    """Distinct short text values per column, for matching against questions."""
    return tuple((table, column, v) for table, column, values in _distinct_values(db_path, per_column, text_only=True)
                 for v in values if 2 < len(v) <= 40)


def _distinct_values(db_path: str, limit: int, text_only: bool = False):
    """(table, column, distinct non-null values) per column; unreadable columns are skipped."""
    try:
        conn = open_sqlite_read_only(db_path)
    except UnreadableDatabase as error:  # a data error; the message names the file
        raise ValueError(str(error)) from error
    try:
        for table, column in _columns(conn):
            where = f"typeof(\"{column}\") = 'text'" if text_only else f'"{column}" IS NOT NULL'
            try:
                rows = conn.execute(f'SELECT DISTINCT "{column}" FROM "{table}" WHERE {where} LIMIT {limit}').fetchall()
            except sqlite3.Error:
                continue
            yield table, column, [r[0] for r in rows]
    finally:
        conn.close()


def match_contents(db_path: str, question: str, limit: int = 6) -> list[tuple[str, str, str]]:
    """Database text values that occur in the question as whole words (case-insensitive)."""
    text = question.lower()
    hits = [(t, c, v) for t, c, v in _text_values(db_path)
            if v.lower() in text and re.search(rf"\b{re.escape(v.lower())}\b", text)]
    hits.sort(key=lambda h: -len(h[2]))  # longer matches are more specific
    return hits[:limit]


def _columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [(t, r[1]) for t in tables for r in conn.execute(f'PRAGMA table_info("{t}")')]
