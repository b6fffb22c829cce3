"""Exact match after normalisation: same SQL up to case, whitespace, quotes and a final `;`.

This is a string-level exact match, not Spider's component-set match (which needs a full SQL
parser and ignores values); it is reported beside execution accuracy as a stricter signal.
String literals keep their case; keywords and identifiers are lower-cased.
"""

from __future__ import annotations

import re

import sqlparse


def normalize_sql(sql: str) -> str:
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        return ""
    out = []
    for token in sqlparse.parse(sql)[0].flatten():
        if token.is_whitespace:
            out.append(" ")
        elif token.ttype in sqlparse.tokens.Literal.String.Single or token.ttype in sqlparse.tokens.Literal.String.Symbol:
            out.append("'" + token.value[1:-1] + "'")  # "x" and 'x' compare equal
        else:
            out.append(token.value.lower())
    text = re.sub(r"\s+", " ", "".join(out)).strip()
    return re.sub(r"\s*([(),])\s*", r"\1", text)


def exact_match(pred: str, gold: str) -> bool:
    return normalize_sql(pred) == normalize_sql(gold)
