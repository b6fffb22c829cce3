"""Build a Spider-format text-to-SQL dataset: SQLite databases, `tables.json`, train/dev splits.

Deterministic for a given `GeneratorSpec`. Each database folder also holds `test_suite_variants`
extra databases with the same schema and different contents, so test-suite accuracy (TS) is
stricter than execution accuracy (EX), as on the real test suites.

The output is built in a staging folder and renamed into place (`kdlight.io.staging_dir`), so an interrupted build never
leaves a half-written dataset behind, and a finished one is reused (`ensure_generated`).
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from kdlight.io import staging_dir
from kdlight.tasks.text2sql.sqlgen.schemas import DOMAINS, Domain, Table
from kdlight.tasks.text2sql.sqlgen.templates import TEMPLATES

GENERATOR_VERSION = 2  # bump when the output for a given spec changes: it is part of the cache key


@dataclass(frozen=True)
class GeneratorSpec:
    """What to generate.

    Attributes:
        n_train: training questions.
        n_dev: development questions (no question text shared with train).
        seed: one seed for contents and questions.
        test_suite_variants: extra databases per schema with other contents (for TS accuracy).
        hardness_weights: relative frequency of easy, medium, hard and extra questions.
    """

    n_train: int = 2000
    n_dev: int = 300
    seed: int = 0
    test_suite_variants: int = 2
    hardness_weights: tuple[float, float, float, float] = (0.3, 0.35, 0.2, 0.15)

    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_generated(spec: GeneratorSpec, cache_dir: str | Path) -> Path:
    """Return the dataset folder for `spec` under `cache_dir`, generating it once if needed."""
    target = Path(cache_dir) / f"sqlgen-{spec.key()}"
    if (target / "dev.json").exists():
        return target
    with staging_dir(target, replace=False) as staging:  # another process may finish first: keep theirs
        generate(spec, staging)
    return target


def generate(spec: GeneratorSpec, root: Path) -> None:
    """Write `train.json`, `dev.json`, `tables.json` and `database/<db_id>/*.sqlite` under root."""
    rng = random.Random(spec.seed)
    contents = {}
    for domain in DOMAINS:
        folder = root / "database" / domain.db_id
        folder.mkdir(parents=True)
        for variant in range(spec.test_suite_variants + 1):
            rows = _random_rows(domain, random.Random(f"{spec.seed}-{domain.db_id}-{variant}"))
            name = domain.db_id if variant == 0 else f"{domain.db_id}_ts{variant}"
            _write_database(domain, rows, folder / f"{name}.sqlite")
            if variant == 0:
                contents[domain.db_id] = rows
    (root / "tables.json").write_text(json.dumps([_schema_entry(d) for d in DOMAINS], indent=1))
    train, dev = _questions(spec, contents, rng)
    (root / "train.json").write_text(json.dumps(train, indent=1))
    (root / "dev.json").write_text(json.dumps(dev, indent=1))


def _questions(spec: GeneratorSpec, contents: dict, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Distinct questions per hardness level, split train/dev within each level.

    Levels are filled to their weighted quota; a level whose templates run out of distinct
    questions is topped up by the others, so the splits keep every level present.
    """
    total = spec.n_train + spec.n_dev
    weights = dict(zip(TEMPLATES, spec.hardness_weights))
    pools = {level: _draw_level(level, round(total * w / sum(weights.values())), contents, rng)
             for level, w in weights.items()}
    shortfall = total - sum(len(p) for p in pools.values())
    for level in sorted(weights, key=lambda lv: -weights[lv]):
        if shortfall <= 0:
            break
        extra = _draw_level(level, len(pools[level]) + shortfall, contents, rng, seen=pools[level])
        shortfall -= len(extra) - len(pools[level])
        pools[level] = extra
    if shortfall > 0:
        raise RuntimeError(f"sqlgen: {total - shortfall} distinct questions, {total} asked; lower n_train/n_dev")
    train, dev = [], []
    for level, pool in pools.items():
        rng.shuffle(pool)
        n_dev = round(len(pool) * spec.n_dev / total)
        dev += pool[:n_dev]
        train += pool[n_dev:]
    rng.shuffle(train)
    rng.shuffle(dev)
    return train[: spec.n_train], dev[: spec.n_dev]


def _draw_level(level: str, quota: int, contents: dict, rng: random.Random,
                seen: list[dict] | None = None) -> list[dict]:
    """Draw distinct questions of one level until `quota` or until draws stop finding new ones."""
    examples = list(seen or [])
    queries = {e["query"] for e in examples}  # distinct SQL: no dev query is a train query
    misses = 0
    while len(examples) < quota and misses < 2000:
        domain = DOMAINS[rng.randrange(len(DOMAINS))]
        templates = TEMPLATES[level]
        drawn = templates[rng.randrange(len(templates))](domain, contents[domain.db_id], rng)
        if drawn is None or drawn[1] in queries:
            misses += 1
            continue
        misses = 0
        queries.add(drawn[1])
        examples.append({"db_id": domain.db_id, "question": drawn[0], "query": drawn[1], "hardness": level})
    return examples


def _random_rows(domain: Domain, rng: random.Random) -> dict[str, list[dict]]:
    n_parent, n_child = domain.rows
    parents = _rows_for(domain.parent, n_parent, rng)
    children = _rows_for(domain.child, n_child, rng)
    # Leave some parents without children so NOT IN questions have answers.
    linked = [p[domain.parent.key] for p in parents[: max(1, int(0.8 * n_parent))]]
    for child in children:
        child[domain.parent.key] = rng.choice(linked)
    return {domain.parent.name: parents, domain.child.name: children}


def _rows_for(table: Table, n: int, rng: random.Random) -> list[dict]:
    labels = rng.sample(list(table.label.choices), min(n, len(table.label.choices)))
    rows = []
    for i, label in enumerate(labels, start=1):
        row = {table.key: i, table.label.name: label}
        for c in table.columns:
            row[c.name] = rng.choice(c.choices) if c.type == "text" else rng.randint(c.low, c.high)
        rows.append(row)
    return rows


def _columns(domain: Domain, table: Table) -> list[tuple[str, str]]:
    cols = [(table.key, "number"), (table.label.name, "text")]
    cols += [(c.name, c.type) for c in table.columns]
    if table is domain.child:
        cols.append((domain.parent.key, "number"))
    return cols


def _write_database(domain: Domain, rows: dict, path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for table in (domain.parent, domain.child):
            cols = _columns(domain, table)
            decl = ", ".join(f"{n} {'INTEGER' if t == 'number' else 'TEXT'}" for n, t in cols)
            fk = (f", FOREIGN KEY ({domain.parent.key}) REFERENCES {domain.parent.name}({domain.parent.key})"
                  if table is domain.child else "")
            conn.execute(f"CREATE TABLE {table.name} ({decl}, PRIMARY KEY ({table.key}){fk})")
            names = [n for n, _ in cols]
            conn.executemany(
                f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [tuple(r[n] for n in names) for r in rows[table.name]],
            )
    conn.close()


def _schema_entry(domain: Domain) -> dict:
    """The Spider `tables.json` entry for a domain."""
    tables = [domain.parent, domain.child]
    columns: list[list] = [[-1, "*"]]
    types = ["text"]
    for ti, table in enumerate(tables):
        for name, typ in _columns(domain, table):
            columns.append([ti, name])
            types.append(typ)
    index = {(t, n): i for i, (t, n) in enumerate(columns)}
    return {
        "db_id": domain.db_id,
        "table_names_original": [t.name for t in tables],
        "table_names": [t.singular for t in tables],
        "column_names_original": columns,
        "column_names": [[t, n.replace("_", " ")] for t, n in columns],
        "column_types": types,
        "primary_keys": [index[(0, domain.parent.key)], index[(1, domain.child.key)]],
        "foreign_keys": [[index[(1, domain.parent.key)], index[(0, domain.parent.key)]]],
    }
