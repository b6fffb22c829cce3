"""Budgeted distillation's parts on their own: stage budgets and domain quotas, the ledger, IFD."""

from __future__ import annotations

import pytest
import torch

from kdlight.selection.ifd import ifd_of_outputs
from kdlight.selection.ledger import SelectedItem, StageSelection, ledger_rows, ledger_table, ledger_totals
from kdlight.selection.quotas import apportion, domain_shares, stage_budgets, stage_weight
from tests.helpers import tiny_model

POOL = {"algebra": 500, "geometry": 200, "number": 80, "counting": 15, "precalc": 5}


@pytest.mark.parametrize("budget,stages", [(120, 3), (100, 3), (7, 5), (0, 2), (1001, 4)])
def test_stage_budgets_sum_to_the_budget_and_differ_by_at_most_one(budget, stages):
    budgets = stage_budgets(budget, stages)
    assert sum(budgets) == budget and len(budgets) == stages
    assert max(budgets) - min(budgets) <= 1 and budgets == sorted(budgets, reverse=True)


@pytest.mark.parametrize("kind", ["naive", "adaptive", "natural"])
@pytest.mark.parametrize("indexing", ["authors", "uniform_last"])
def test_quotas_sum_to_the_stage_budget_in_every_stage(kind, indexing):
    for budget in (40, 41, 7, 1):
        for stage in range(4):
            quotas = apportion(budget, domain_shares(kind, POOL, stage, 4, indexing))
            assert sum(quotas.values()) == budget and set(quotas) == set(POOL)
            assert all(q >= 0 for q in quotas.values())


def test_naive_quotas_are_uniform_whatever_the_pool():
    quotas = apportion(40, domain_shares("naive", POOL, 0, 3))
    assert quotas == {"algebra": 8, "counting": 8, "geometry": 8, "number": 8, "precalc": 8}
    uneven = apportion(42, domain_shares("naive", POOL, 2, 3))
    assert sorted(uneven.values()) == [8, 8, 8, 9, 9]  # the two extra units to the first names (ties)
    assert uneven["algebra"] == 9 and uneven["counting"] == 9


def test_adaptive_quotas_start_natural_and_move_towards_uniform():
    n = sum(POOL.values())
    shares = [domain_shares("adaptive", POOL, i, 4) for i in range(4)]
    assert shares[0] == pytest.approx({d: c / n for d, c in POOL.items()})  # stage 0: natural
    distance = [sum(abs(s[d] - 1 / len(POOL)) for d in POOL) for s in shares]
    assert distance == sorted(distance, reverse=True) and distance[-1] < distance[0] / 3
    # The paper's formula at stage i of K: n_d/N * (K-i)/K + 1/l * i/K.
    assert shares[2]["precalc"] == pytest.approx(5 / n * 2 / 4 + 1 / 5 * 2 / 4)
    # The authors index stages 0..K-1: their last stage is not uniform; uniform_last's is.
    assert shares[3]["algebra"] > 0.2 + 0.01
    last = domain_shares("adaptive", POOL, 3, 4, "uniform_last")
    assert last == pytest.approx(dict.fromkeys(POOL, 0.2))
    assert stage_weight(0, 4, "uniform_last") == 0 and stage_weight(3, 4, "authors") == 0.75


def test_apportion_gives_remainders_to_the_largest_fractions():
    assert apportion(10, {"a": 0.55, "b": 0.3, "c": 0.15}) == {"a": 6, "b": 3, "c": 1}  # 5.5, 3, 1.5 -> a, c tie: a
    assert apportion(3, {"a": 1, "b": 1}) == {"a": 2, "b": 1}
    with pytest.raises(ValueError, match="negative"):
        apportion(-1, {"a": 1})
    with pytest.raises(ValueError, match="stages must be at least 1"):
        stage_budgets(10, 0)
    with pytest.raises(ValueError, match="quotas must be one of"):
        domain_shares("uniform", POOL, 0, 3)


def _item(i: str, domain: str, origin: str = "real", dropped: bool = False) -> SelectedItem:
    return SelectedItem(i, domain, origin, f"text {i}", "1", "r\nThe answer is 1.", "1", dropped, origin != "duplicate")


def test_the_ledger_counts_each_origin_and_charges_dropped_but_not_duplicated_items():
    stage0 = StageSelection(0, 6, {"a": 3, "b": 3}, {"a": 10, "b": 1},
                            [_item("a1", "a"), _item("a2", "a", dropped=True), _item("a3", "a"), _item("b1", "b"),
                             _item("s1", "b", "synthetic"), _item("b1#dup0", "b", "duplicate")])
    stage1 = StageSelection(1, 6, None, {"a": 7, "b": 0}, [_item("a4", "a"), _item("a5", "a")], unspent=4)
    rows = {(r["stage"], r["domain"]): r for r in ledger_rows([stage0, stage1])}
    assert rows[0, "a"] == {"stage": 0, "domain": "a", "quota": 3, "pool_left": 10, "real": 3, "synthesized": 0,
                            "duplicated": 0, "dropped": 1, "charged": 3, "trained": 2}
    assert rows[0, "b"] | {} == {"stage": 0, "domain": "b", "quota": 3, "pool_left": 1, "real": 1, "synthesized": 1,
                                 "duplicated": 1, "dropped": 0, "charged": 2, "trained": 3}
    assert rows[1, "b"]["charged"] == 0 and rows[1, "a"]["quota"] is None
    totals = ledger_totals([stage0, stage1])
    assert totals == {"real": 6, "synthesized": 1, "duplicated": 1, "dropped": 1, "charged": 7, "trained": 7,
                      "unspent": 4, "budget": 12}
    table = ledger_table([stage0, stage1])
    assert "charged 7 of budget 12, unspent 4" in table and len(table.splitlines()) == 1 + 4 + 1 + 1


def test_ifd_is_lower_for_an_output_its_prompt_explains(tokenizer):
    """A model trained on the mapping 'x -> x + 1' (prompt one token, output the next token id)
    explains output t+1 by prompt t: that pair's IFD is below the same output after a prompt that
    predicts something else, and below 1 (the prompt helps)."""
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    tokens = list(range(20, 40))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    from kdlight.data.batch import collate
    from kdlight.models.lm import target_logits

    batch = collate([[bos, t] for t in tokens], [[t + 1, tokenizer.eos_token_id] for t in tokens], list(range(20)), pad)
    for _ in range(150):
        logits = target_logits(model, batch, len(tokenizer))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target_ids.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    eos = tokenizer.eos_token_id
    explained, unexplained = ifd_of_outputs(model, [[bos, 25], [bos, 33]], [[26, eos], [26, eos]], bos, pad, len(tokenizer))
    assert explained < 1.0 and unexplained > 10 * explained
