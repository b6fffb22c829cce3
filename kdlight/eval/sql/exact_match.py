"""Exact match after normalisation: same SQL up to case, whitespace, quotes and a final `;`.

This is a string-level exact match, not Spider's component-set match (which needs a full SQL
parser and ignores values); it is reported beside execution accuracy as a stricter signal.
String literals keep their case; keywords and identifiers are lower-cased.
"""

from __future__ import annotations

import sqlparse


def normalize_sql(sql: str) -> str:
    """The query's tokens, one space apart: keywords and identifiers lower-cased, literals kept."""
    sql = sql.strip().rstrip(";").strip()
    tokens = []
    for statement in sqlparse.parse(sql):
        for token in statement.flatten():
            if token.is_whitespace:
                continue
            if token.ttype in sqlparse.tokens.Literal.String.Single or token.ttype in sqlparse.tokens.Literal.String.Symbol:
                tokens.append("'" + token.value[1:-1] + "'")  # "x" and 'x' compare equal
            else:
                tokens.append(token.value.lower())
    return " ".join(tokens)


def exact_match(pred: str, gold: str) -> bool:
    return normalize_sql(pred) == normalize_sql(gold)
