"""Paired significance of one method against another on the same questions (McNemar's test).

Two methods evaluated on the same examples disagree on some of them; only those discordant pairs
carry information about which is better. McNemar's exact test asks whether "A right, B wrong"
and "B right, A wrong" are equally likely (a two-sided binomial test with p = 1/2 on the
discordant pairs). With several seeds, run i of A is paired with run i of B (same seed, hence the
same data order) and the discordant counts are pooled over seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from math import comb
from pathlib import Path


@dataclass(frozen=True)
class PairedTest:
    """A against B on `n` paired (seed, question) outcomes.

    Attributes:
        only_a: pairs A got right and B wrong.
        only_b: pairs B got right and A wrong.
        acc_a, acc_b: accuracy (%) of each over the pairs.
        p_value: two-sided exact McNemar p-value.
    """

    n: int
    only_a: int
    only_b: int
    acc_a: float
    acc_b: float
    p_value: float


def mcnemar(a: list[bool], b: list[bool]) -> PairedTest:
    """Exact McNemar test on paired outcomes `a[i]`, `b[i]` of the same question."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must have the same length, got {len(a)} and {len(b)}")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    discordant = only_a + only_b
    tail = sum(comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    p = min(Fraction(1), 2 * Fraction(tail, 2 ** discordant)) if discordant else Fraction(1)
    n = len(a)
    return PairedTest(n, only_a, only_b, 100.0 * sum(a) / max(n, 1), 100.0 * sum(b) / max(n, 1), float(p))


def outcomes(folder: Path, metric: str = "ex") -> dict[int, bool]:
    """Per-example outcome of one run, by evaluation-example index (its predictions.jsonl)."""
    path = Path(folder) / "predictions.jsonl"
    with open(path) as f:
        return {record["index"]: bool(record[metric]) for record in map(json.loads, f)}


def paired_table(runs: list[dict], pairs: list[tuple[str, str]], metric: str = "ex") -> list[dict]:
    """One row per (A, B, data, student, teacher): the pooled McNemar test over common seeds.

    Runs are finished jobs (with `folder`); A and B are paired on data, student and seed; a method
    without a teacher (SFT) pairs with every teacher of the other method.
    """
    rows = []
    for name_a, name_b in pairs:
        groups: dict[tuple, list[tuple[dict, dict]]] = {}
        for a in (r for r in runs if r["method"] == name_a):
            for b in (r for r in runs if r["method"] == name_b):
                same = all(a[k] == b[k] for k in ("data", "model", "seed"))
                teachers_match = not a.get("teacher") or not b.get("teacher") or a["teacher"] == b["teacher"]
                if same and teachers_match:
                    teacher = a.get("teacher") or b.get("teacher") or "-"
                    groups.setdefault((a["data"], a["model"], teacher), []).append((a, b))
        for (data, model, teacher), matched in sorted(groups.items()):
            xs, ys = [], []
            for a, b in matched:
                left, right = outcomes(Path(a["folder"]), metric), outcomes(Path(b["folder"]), metric)
                common = sorted(left.keys() & right.keys())
                xs += [left[i] for i in common]
                ys += [right[i] for i in common]
            rows.append({"a": name_a, "b": name_b, "data": data, "student": model, "teacher": teacher,
                         "seeds": len(matched), "test": mcnemar(xs, ys)})
    return rows


def format_paired(rows: list[dict], metric: str = "ex") -> str:
    head = (f"| A | B | data | student | teacher | seeds | pairs | A only | B only | {metric.upper()} A "
            f"| {metric.upper()} B | p (McNemar) |")
    lines = [head, "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r["test"]
        lines.append(f"| {r['a']} | {r['b']} | {r['data']} | {r['student']} | {r['teacher']} | {r['seeds']} | {t.n} "
                     f"| {t.only_a} | {t.only_b} | {t.acc_a:.1f} | {t.acc_b:.1f} | {t.p_value:.3g} |")
    return "\n".join(lines) + "\n"
