"""Question/SQL templates by Spider hardness: each draws columns and values from one database.

A template is a function `(domain, rows, rng) -> (question, sql) | None`; `rows` holds the main
database's contents so filter values exist and most gold results are non-empty. SQL is written in
the normalised style used for training targets (upper-case keywords, Spider's `T1`/`T2` aliases).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kdlight.tasks.text2sql.sqlgen.schemas import Column, Domain, Table

Rows = dict[str, list[dict]]
Template = Callable[[Domain, Rows, random.Random], "tuple[str, str] | None"]

OPS = {">": ["greater than", "more than", "above"], "<": ["less than", "below", "under"]}
AGGS = {"avg": "average", "max": "maximum", "min": "minimum", "sum": "total"}


def _lit(column: Column, value: object) -> str:
    return f"'{value}'" if column.type == "text" else str(value)


def _value(rows: Rows, table: Table, column: Column, rng: random.Random) -> object:
    return rng.choice(rows[table.name])[column.name]


def _threshold(rows: Rows, table: Table, column: Column, rng: random.Random, op: str = ">") -> int:
    """A round threshold from the column's grid (19 evenly spaced values inside its range).

    Round, recurring thresholds keep the task learnable by tiny models in minutes (copying any
    4-digit number from the question is what they fail at first); dev questions still combine
    thresholds, columns and templates in ways the training set does not.
    """
    step = max(1, (column.high - column.low) // 20)
    return column.low + step * rng.randint(1, 19)


def _pick(rng: random.Random, options: list) -> object:
    return options[rng.randrange(len(options))]


def _table(domain: Domain, rng: random.Random) -> Table:
    return domain.parent if rng.random() < 0.5 else domain.child


def _shown(table: Table, rng: random.Random) -> Column:
    """A column to show: the label most of the time, sometimes a descriptive column."""
    return table.label if rng.random() < 0.6 else _pick(rng, list(table.columns))


# --- easy ---------------------------------------------------------------------------------------
def select_all(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    c = _shown(t, rng)
    q = _pick(rng, [f"List the {c.phrase} of all {t.plural}.", f"What are the {c.phrase}s of the {t.plural}?",
                    f"Show every {t.singular} {c.phrase}."])
    return q, f"SELECT {c.name} FROM {t.name}"


def count_all(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    q = _pick(rng, [f"How many {t.plural} are there?", f"Count the {t.plural}.",
                    f"What is the number of {t.plural}?"])
    return q, f"SELECT count(*) FROM {t.name}"


def aggregate(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    n = _pick(rng, t.numeric())
    agg = _pick(rng, list(AGGS))
    q = _pick(rng, [f"What is the {AGGS[agg]} {n.phrase} of all {t.plural}?",
                    f"Find the {AGGS[agg]} {n.phrase} of {t.plural}."])
    return q, f"SELECT {agg}({n.name}) FROM {t.name}"


def filter_text(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    if not t.categorical():
        return None
    f = _pick(rng, t.categorical())
    c = _shown(t, rng)
    if c == f:
        c = t.label
    v = _value(rows, t, f, rng)
    q = _pick(rng, [f"What is the {c.phrase} of {t.plural} whose {f.phrase} is {v}?",
                    f"Show the {c.phrase} of each {t.singular} with {f.phrase} {v}."])
    return q, f"SELECT {c.name} FROM {t.name} WHERE {f.name} = {_lit(f, v)}"


def filter_number(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    n = _pick(rng, t.numeric())
    op = _pick(rng, list(OPS))
    v = _threshold(rows, t, n, rng, op)
    c = t.label
    q = _pick(rng, [f"Which {t.plural} have a {n.phrase} {_pick(rng, OPS[op])} {v}? Give their {c.phrase}.",
                    f"List the {c.phrase} of {t.plural} with {n.phrase} {_pick(rng, OPS[op])} {v}."])
    return q, f"SELECT {c.name} FROM {t.name} WHERE {n.name} {op} {v}"


# --- medium -------------------------------------------------------------------------------------
def count_where(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    if not t.categorical():
        return None
    f = _pick(rng, t.categorical())
    v = _value(rows, t, f, rng)
    q = _pick(rng, [f"How many {t.plural} have {f.phrase} {v}?",
                    f"Count the {t.plural} whose {f.phrase} is {v}."])
    return q, f"SELECT count(*) FROM {t.name} WHERE {f.name} = {_lit(f, v)}"


def order_by(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    n = _pick(rng, t.numeric())
    desc = rng.random() < 0.5
    word = "descending" if desc else "ascending"
    sql = f"SELECT {t.label.name} FROM {t.name} ORDER BY {n.name} {'DESC' if desc else 'ASC'}"
    if rng.random() < 0.5:
        k = rng.randint(2, 6)
        q = _pick(rng, [f"Show the {t.label.phrase} of the first {k} {t.plural} by {n.phrase} {word}.",
                        f"List {k} {t.plural} ordered by {n.phrase} {word}, showing the {t.label.phrase}."])
        return q, f"{sql} LIMIT {k}"
    q = _pick(rng, [f"List the {t.label.phrase} of {t.plural} ordered by {n.phrase} {word}.",
                    f"Sort the {t.plural} by {n.phrase} in {word} order and show their {t.label.phrase}."])
    return q, sql


def superlative(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    n = _pick(rng, t.numeric())
    top = rng.random() < 0.5
    word = "highest" if top else "lowest"
    q = _pick(rng, [f"What is the {t.label.phrase} of the {t.singular} with the {word} {n.phrase}?",
                    f"Which {t.singular} has the {word} {n.phrase}? Show its {t.label.phrase}."])
    return q, f"SELECT {t.label.name} FROM {t.name} ORDER BY {n.name} {'DESC' if top else 'ASC'} LIMIT 1"


def group_count(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    if not t.categorical():
        return None
    g = _pick(rng, t.categorical())
    if rng.random() < 0.6:
        n = _pick(rng, t.numeric())
        v = _threshold(rows, t, n, rng)
        q = _pick(rng, [f"For each {g.phrase}, how many {t.plural} have a {n.phrase} above {v}?",
                        f"Count the {t.plural} with {n.phrase} greater than {v} for each {g.phrase}."])
        return q, f"SELECT {g.name}, count(*) FROM {t.name} WHERE {n.name} > {v} GROUP BY {g.name}"
    q = _pick(rng, [f"How many {t.plural} are there for each {g.phrase}?",
                    f"Show each {g.phrase} and the number of {t.plural} with it."])
    return q, f"SELECT {g.name}, count(*) FROM {t.name} GROUP BY {g.name}"


def join_filter(d: Domain, rows: Rows, rng: random.Random):
    p, c = d.parent, d.child
    v = _value(rows, p, p.label, rng)
    q = _pick(rng, [f"Show the {c.label.phrase} of {c.plural} of the {p.singular} {v}.",
                    f"What are the {c.label.phrase}s of the {c.plural} whose {p.singular} is {v}?"])
    return q, (f"SELECT T2.{c.label.name} FROM {p.name} AS T1 JOIN {c.name} AS T2 "
               f"ON T1.{p.key} = T2.{p.key} WHERE T1.{p.label.name} = {_lit(p.label, v)}")


# --- hard ---------------------------------------------------------------------------------------
def group_having(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    if not t.categorical():
        return None
    g = _pick(rng, t.categorical())
    k = rng.randint(1, 6)
    q = _pick(rng, [f"Which {g.phrase} has more than {k} {t.plural}?",
                    f"List the {g.phrase}s shared by more than {k} {t.plural}."])
    return q, f"SELECT {g.name} FROM {t.name} GROUP BY {g.name} HAVING count(*) > {k}"


def join_group(d: Domain, rows: Rows, rng: random.Random):
    p, c = d.parent, d.child
    head = (f"SELECT T1.{p.label.name}, count(*) FROM {p.name} AS T1 JOIN {c.name} AS T2 "
            f"ON T1.{p.key} = T2.{p.key}")
    if rng.random() < 0.6:
        n = _pick(rng, c.numeric())
        v = _threshold(rows, c, n, rng)
        q = _pick(rng, [f"For each {p.singular}, show its {p.label.phrase} and how many {c.plural} have {n.phrase} above {v}.",
                        f"How many {c.plural} with a {n.phrase} over {v} does each {p.singular} have? Give the {p.label.phrase}."])
        return q, f"{head} WHERE T2.{n.name} > {v} GROUP BY T1.{p.key}"
    q = _pick(rng, [f"For each {p.singular}, show its {p.label.phrase} and the number of {c.plural}.",
                    f"How many {c.plural} does each {p.singular} have? Give the {p.label.phrase} too."])
    return q, f"{head} GROUP BY T1.{p.key}"


def nested_average(d: Domain, rows: Rows, rng: random.Random):
    t = _table(d, rng)
    n = _pick(rng, t.numeric())
    word = _pick(rng, ["above", "below"])
    op = ">" if word == "above" else "<"
    q = _pick(rng, [f"List the {t.label.phrase} of {t.plural} whose {n.phrase} is {word} the average.",
                    f"Which {t.plural} have a {n.phrase} {word} average? Show their {t.label.phrase}."])
    return q, f"SELECT {t.label.name} FROM {t.name} WHERE {n.name} {op} (SELECT avg({n.name}) FROM {t.name})"


# --- extra --------------------------------------------------------------------------------------
def nested_not_in(d: Domain, rows: Rows, rng: random.Random):
    p, c = d.parent, d.child
    sql = f"SELECT {p.label.name} FROM {p.name} WHERE {p.key} NOT IN (SELECT {p.key} FROM {c.name}"
    if c.categorical() and rng.random() < 0.7:
        f = _pick(rng, c.categorical())
        v = _value(rows, c, f, rng)
        q = _pick(rng, [f"Which {p.plural} have no {c.plural} with {f.phrase} {v}? Give their {p.label.phrase}.",
                        f"Show the {p.label.phrase} of {p.plural} without any {c.singular} whose {f.phrase} is {v}."])
        return q, f"{sql} WHERE {f.name} = {_lit(f, v)})"
    q = _pick(rng, [f"Which {p.plural} have no {c.plural}? Give their {p.label.phrase}.",
                    f"Show the {p.label.phrase} of {p.plural} without any {c.singular}."])
    return q, sql + ")"


def join_superlative(d: Domain, rows: Rows, rng: random.Random):
    p, c = d.parent, d.child
    head = f"SELECT T1.{p.label.name} FROM {p.name} AS T1 JOIN {c.name} AS T2 ON T1.{p.key} = T2.{p.key}"
    tail = f"GROUP BY T1.{p.key} ORDER BY count(*) DESC LIMIT 1"
    if rng.random() < 0.7:
        n = _pick(rng, c.numeric())
        v = _threshold(rows, c, n, rng)
        q = _pick(rng, [f"What is the {p.label.phrase} of the {p.singular} with the most {c.plural} whose {n.phrase} is above {v}?",
                        f"Which {p.singular} has the most {c.plural} with {n.phrase} over {v}? Show its {p.label.phrase}."])
        return q, f"{head} WHERE T2.{n.name} > {v} {tail}"
    q = _pick(rng, [f"What is the {p.label.phrase} of the {p.singular} with the most {c.plural}?",
                    f"Which {p.singular} has the largest number of {c.plural}? Show its {p.label.phrase}."])
    return q, f"{head} {tail}"


TEMPLATES: dict[str, list[Template]] = {
    "easy": [select_all, count_all, aggregate, filter_text, filter_number],
    "medium": [count_where, order_by, superlative, group_count, join_filter],
    "hard": [group_having, join_group, nested_average],
    "extra": [nested_not_in, join_superlative],
}
