"""The budget ledger: what every stage spent, per domain, exactly.

Each stage's selection (`StageSelection`) lists its items: real pool examples, teacher-synthesised
examples and duplicates, each marked dropped (its rationale reached a wrong answer) or kept, and
charged (the teacher wrote it, or a gold label was bought) or free (a duplicate). The ledger is
computed from the stages' selections only, never kept as a running count, so a resumed run that
reads back a stage's selection cannot charge it twice. Per stage and domain:

    quota        the domain's share of the stage budget (policies without quotas: none)
    pool_left    its real pool before the stage
    real         pool examples selected
    synthesized  new examples the teacher wrote
    duplicated   repeats of the domain's earlier examples (free)
    dropped      annotations removed for a wrong answer (charged all the same)
    charged      real + synthesized: what the budget paid for
    trained      what the stage adds to the training set (real + synthesized + duplicated - dropped)

and per stage, `unspent`: budget no domain could use (the whole pool and the teacher ran out).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdlight.io import read_json, write_json

ORIGINS = ("real", "synthetic", "duplicate")
COLUMNS = ("quota", "pool_left", "real", "synthesized", "duplicated", "dropped", "charged", "trained")


@dataclass(frozen=True)
class SelectedItem:
    """One training example a stage bought (or duplicated).

    Attributes:
        id: unique within the run (a duplicate's is `<source id>#dup<k>`).
        domain: its domain.
        origin: `real`, `synthetic` or `duplicate`.
        text: the raw input text.
        answer: the gold answer (a synthetic example's: the teacher's own).
        target: the training target (rationale + answer line, or the answer line alone).
        teacher_answer: the answer the teacher's rationale reached (None: none parsed, or no teacher).
        dropped: removed from training for a wrong answer (still charged).
        charged: the budget paid for it (a duplicate is free).
        ifd: its IFD score when it was ranked by one, else None.
    """

    id: str
    domain: str
    origin: str
    text: str
    answer: str
    target: str
    teacher_answer: str | None = None
    dropped: bool = False
    charged: bool = True
    ifd: float | None = None


@dataclass
class StageSelection:
    """What one stage selected: its budget, its quotas and its items."""

    stage: int
    budget: int
    quotas: dict[str, int] | None
    pool_left: dict[str, int]
    items: list[SelectedItem]
    unspent: int = 0
    notes: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        write_json(path, {**asdict(self), "items": [asdict(i) for i in self.items]})

    @classmethod
    def load(cls, path: Path) -> StageSelection:
        raw = read_json(path)
        return cls(**{**raw, "items": [SelectedItem(**i) for i in raw["items"]]})

    def charged(self) -> int:
        return sum(i.charged for i in self.items)


def ledger_rows(selections: Sequence[StageSelection]) -> list[dict]:
    """One row per stage and domain (every domain of the pool in every stage)."""
    rows = []
    for selection in selections:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS[2:], 0))
        for item in selection.items:
            c = counts[item.domain]
            c[{"real": "real", "synthetic": "synthesized", "duplicate": "duplicated"}[item.origin]] += 1
            c["dropped"] += item.dropped
            c["charged"] += item.charged
            c["trained"] += not item.dropped
        for domain in sorted(set(selection.pool_left) | set(counts)):
            quota = selection.quotas.get(domain) if selection.quotas is not None else None
            rows.append({"stage": selection.stage, "domain": domain, "quota": quota,
                         "pool_left": selection.pool_left.get(domain, 0), **counts[domain]})
    return rows


def ledger_totals(selections: Sequence[StageSelection]) -> dict[str, int]:
    rows = ledger_rows(selections)
    totals = {c: sum(r[c] for r in rows) for c in COLUMNS[2:]}
    return totals | {"unspent": sum(s.unspent for s in selections), "budget": sum(s.budget for s in selections)}


def write_ledger(path: Path, selections: Sequence[StageSelection], settings: Mapping) -> dict:
    """ledger.json: the settings, one row per stage and domain, per-stage and overall totals."""
    ledger = {"settings": dict(settings), "rows": ledger_rows(selections),
              "stages": [{"stage": s.stage, "budget": s.budget, "unspent": s.unspent, "notes": s.notes,
                          **ledger_totals([s])} for s in selections],
              "totals": ledger_totals(selections)}
    write_json(path, ledger)
    return ledger


def ledger_table(selections: Sequence[StageSelection]) -> str:
    """The ledger as an aligned text table (for logs), one line per stage and domain, then totals."""
    header = ("stage", "domain", *COLUMNS)
    lines = [[str(r["stage"]), r["domain"], *("-" if r[c] is None else str(r[c]) for c in COLUMNS)]
             for r in ledger_rows(selections)]
    totals = ledger_totals(selections)
    lines.append(["all", "total", "-", "-", *(str(totals[c]) for c in COLUMNS[2:])])
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    render = ["  ".join(x.rjust(w) if i > 1 else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
              for row in (header, *lines)]
    spent = f"charged {totals['charged']} of budget {totals['budget']}, unspent {totals['unspent']}"
    return "\n".join(render + [spent])
