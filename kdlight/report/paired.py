"""Paired significance of one method against another on the same examples.

Two methods evaluated on the same examples disagree on some of them; only those pairs carry
information about which is better. For right/wrong outcomes (EX, accuracy) this is McNemar's exact
test: are "A right, B wrong" and "B right, A wrong" equally likely (a two-sided binomial test with
p = 1/2 on the discordant pairs)? For per-example scores (BLEU, ROUGE) it is a paired sign-flip
permutation test of the mean difference. With several seeds, run i of A is paired with run i of B
(same seed, hence the same data order) and the pairs are pooled over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np

from kdlight.io import read_jsonl
from kdlight.report.table import row_keys


@dataclass(frozen=True)
class PairedTest:
    """A against B on `n` paired (seed, example) outcomes.

    Attributes:
        n: pairs.
        only_a: pairs where A is better (right where B is wrong, for right/wrong outcomes).
        only_b: pairs where B is better.
        score_a, score_b: mean outcome (%) or mean score of each over the pairs.
        p_value: two-sided p-value.
        test: `mcnemar` or `permutation`.
    """

    n: int
    only_a: int
    only_b: int
    score_a: float
    score_b: float
    p_value: float
    test: str = "mcnemar"


def mcnemar(a: list[bool], b: list[bool]) -> PairedTest:
    """Exact McNemar test on paired outcomes `a[i]`, `b[i]` of the same example."""
    _same_length(a, b)
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    discordant = only_a + only_b
    tail = sum(comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    p = min(Fraction(1), 2 * Fraction(tail, 2 ** discordant)) if discordant else Fraction(1)
    n = len(a)
    return PairedTest(n, only_a, only_b, 100.0 * sum(a) / max(n, 1), 100.0 * sum(b) / max(n, 1), float(p))


def permutation(a: list[float], b: list[float], rounds: int = 10_000, seed: int = 0) -> PairedTest:
    """Paired sign-flip permutation test of mean(a - b) (two-sided; Monte Carlo, seeded)."""
    _same_length(a, b)
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(rounds, len(diffs)))
    extreme = int((np.abs(signs @ diffs) >= abs(diffs.sum()) - 1e-9).sum())
    n = len(a)
    return PairedTest(n, int((diffs > 0).sum()), int((diffs < 0).sum()), sum(a) / max(n, 1), sum(b) / max(n, 1),
                      (extreme + 1) / (rounds + 1), "permutation")


def parse_pairs(items) -> tuple[tuple[str, str], ...]:
    """`["kid:sft", ...]` (or one comma-separated string) -> (("kid", "sft"), ...)."""
    if isinstance(items, str):
        items = [i for i in items.split(",") if i]
    pairs = tuple(tuple(item.split(":")) for item in items)
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"paired tests take A:B method pairs, got {list(items)}")
    return pairs


def _same_length(a: list, b: list) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must have the same length, got {len(a)} and {len(b)}")


def outcomes(folder: Path, file: str, metric: str) -> dict[int, float | bool]:
    """Per-example outcome of one run on one evaluation set, by example index."""
    return {record["index"]: record[metric] for record in read_jsonl(Path(folder) / file)}


def paired_table(runs: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """One row per (A, B, benchmark, student, teacher): the pooled test over common seeds, on the
    first table metric of each benchmark both were scored on.

    A and B are paired on data, student and seed, and on the settings that split a label into
    several table rows (e.g. `policy.budget=120` against `=240`: a row of A pairs with B's row of
    the same settings; a label with one setting pairs with each of the other's); a method without a
    teacher (SFT) pairs with every teacher of the other method.
    """
    rows = []
    settings = {id(run): key[4] for run, key in zip(runs, row_keys(runs))}  # (label, stage, student, teacher, settings, ...)
    for name_a, name_b in pairs:
        groups: dict[tuple, list[tuple[dict, dict, dict]]] = {}
        for a in (r for r in runs if (r.get("label") or r["method"]) == name_a):
            for b in (r for r in runs if (r.get("label") or r["method"]) == name_b):
                if not all(a[k] == b[k] for k in ("data", "model", "seed")):
                    continue
                setting_a, setting_b = settings[id(a)], settings[id(b)]
                if setting_a and setting_b and setting_a != setting_b:
                    continue
                if a.get("teacher") and b.get("teacher") and a["teacher"] != b["teacher"]:
                    continue
                teacher = a.get("teacher") or b.get("teacher") or "-"
                sets_b = {s["name"]: s for s in b.get("benchmarks") or []}
                for spec in a.get("benchmarks") or []:
                    if spec["name"] in sets_b and spec["metrics"]:
                        setting = setting_a or setting_b
                        groups.setdefault((spec["name"], a["model"], teacher, setting), []).append((a, b, spec))
        for (benchmark, model, teacher, setting), matched in sorted(groups.items()):
            xs, ys = [], []
            metric = matched[0][2]["metrics"][0]
            for a, b, spec in matched:
                file = spec["predictions"]
                left, right = outcomes(Path(a["folder"]), file, metric), outcomes(Path(b["folder"]), file, metric)
                common = sorted(left.keys() & right.keys())
                xs += [left[i] for i in common]
                ys += [right[i] for i in common]
            binary = all(isinstance(v, bool) for v in xs + ys)
            test = mcnemar(xs, ys) if binary else permutation([float(x) for x in xs], [float(y) for y in ys])
            where = f"{benchmark} [{', '.join(setting)}]" if setting else benchmark
            rows.append({"a": name_a, "b": name_b, "benchmark": where, "metric": metric, "student": model,
                         "teacher": teacher, "seeds": len(matched), "test": test})
    return rows


def format_paired(rows: list[dict]) -> str:
    head = "| A | B | benchmark | metric | student | teacher | seeds | pairs | A better | B better | A | B | p |"
    lines = [head, "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r["test"]
        lines.append(f"| {r['a']} | {r['b']} | {r['benchmark']} | {r['metric'].upper()} | {r['student']} | "
                     f"{r['teacher']} | {r['seeds']} | {t.n} | {t.only_a} | {t.only_b} | {t.score_a:.1f} | "
                     f"{t.score_b:.1f} | {t.p_value:.3g} ({t.test}) |")
    return "\n".join(lines) + "\n"
