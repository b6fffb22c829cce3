"""`ltgen`, the generated long-tailed data: seeded, Zipf-shaped pool, balanced test and teacher
splits, and rationales that reach the answer their rule gives."""

import itertools
import re
from collections import Counter

import pytest

from kdlight.eval.answers import parse_answer
from kdlight.tasks.longtail.generated import RULES, LongTailGenSource, zipf_counts
from kdlight.tasks.longtail.record import rationale_target


@pytest.fixture(scope="module")
def splits():
    return LongTailGenSource().splits()


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_same_seed_same_records_other_seed_other_records(splits):
    assert LongTailGenSource().splits() == splits
    other = LongTailGenSource(seed=1).splits()
    for split in ("train", "test", "teacher"):
        assert [r.text for r in other[split]] != [r.text for r in splits[split]]


def test_pool_counts_are_zipf_shaped_and_sum_to_n_train(splits):
    source = LongTailGenSource()
    counts = Counter(r.domain for r in splits["train"])
    ranked = [counts[d] for d in source.domain_names]
    assert ranked == source.train_counts() and sum(ranked) == source.n_train == len(splits["train"])
    assert all(a > b for a, b in itertools.pairwise(ranked))  # strictly decreasing, head first
    assert ranked[0] / ranked[-1] > 30 and ranked[-1] >= 10  # a long tail, but every domain is present
    # Close to 1/rank^s: each count within one example of its exact share.
    weights = [1 / r ** source.zipf_exponent for r in range(1, len(ranked) + 1)]
    assert all(abs(c - source.n_train * w / sum(weights)) < 1 for c, w in zip(ranked, weights))


@pytest.mark.parametrize("n,domains,exponent", [(600, 6, 2.0), (1000, 6, 1.5), (7, 3, 0.0), (101, 4, 1.0)])
def test_zipf_counts_sum_exactly(n, domains, exponent):
    counts = zipf_counts(n, domains, exponent)
    assert sum(counts) == n and counts == sorted(counts, reverse=True)


def test_test_and_teacher_splits_are_balanced(splits):
    source = LongTailGenSource()
    for split, per_domain in (("test", source.test_per_domain), ("teacher", source.teacher_per_domain)):
        assert Counter(r.domain for r in splits[split]) == {d: per_domain for d in RULES}


def test_ids_are_unique_and_every_record_has_a_rationale(splits):
    ids = [r.id for records in splits.values() for r in records]
    assert len(ids) == len(set(ids))
    assert all(r.rationale for records in splits.values() for r in records)


def test_rationales_reach_the_answer_the_rule_gives(splits):
    """The answer recomputed from the input's numbers, the rationale ending at it, and the target
    parsed back to it by the scorer's parser."""
    rules = {"next": lambda n: n + 1, "previous": lambda n: n - 1, "double": lambda n: 2 * n,
             "smaller": min, "last_digit": lambda n: n % 10, "first_digit": lambda n: n // 100}
    for record in (r for records in splits.values() for r in records):
        assert record.answer == str(rules[record.domain](*numbers(record.text))), record
        assert numbers(record.rationale)[-1] == int(record.answer), record
        assert numbers(record.rationale)[0] in numbers(record.text), record  # it restates the input
        assert parse_answer(rationale_target(record.rationale, record.answer), "number") == record.answer


def test_every_wording_is_used_and_inputs_vary(splits):
    for domain in RULES:
        records = [r for r in splits["teacher"] if r.domain == domain]
        assert {r.meta["wording"] for r in records} == set(range(len(RULES[domain].wordings)))
        assert len({r.text for r in records}) >= 20


def test_texts_are_short(splits):
    assert max(len(r.text.split()) for records in splits.values() for r in records) <= 8
    assert max(len(rationale_target(r.rationale, r.answer).split()) for r in splits["teacher"]) <= 14


def test_domains_select_and_order_the_ranks():
    source = LongTailGenSource(n_train=100, domains=["previous", "next"])
    counts = Counter(r.domain for r in source.splits()["train"])
    assert source.domain_names == ("previous", "next") and counts["previous"] > counts["next"]
    assert source.kind == "number" and source.labels() is None and "ltgen" in source.describe()


@pytest.mark.parametrize("settings,message", [
    ({"domains": ["next", "cube"]}, "unknown domains"),
    ({"domains": ["next", "next"]}, "distinct"),
    ({"zipf_exponent": -1.0}, "zipf_exponent"),
    ({"n_train": 20, "zipf_exponent": 3.0}, "without training examples"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        LongTailGenSource(**settings)
