"""Long-tail tasks: answers parsed from real generations and stored rationales, MATH normalisation,
accuracy and per-class F1 with their per-domain, macro and micro averages, every real-data loader on
the real files and on bad ones, the stored teacher's rationales, and the data configs."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from kdlight.cli.train import CONFIG_DIR
from kdlight.data.example import Example
from kdlight.eval.answers import (
    AnswerAccuracyScorer,
    LabelF1Scorer,
    normalize_answer,
    normalize_math_answer,
    normalize_number,
    parse_answer,
)
from kdlight.tasks.longtail import (
    Gsm8kSource,
    LongTailRecord,
    LongTailTask,
    MathSource,
    McqaSource,
    R52Source,
    StoredRationales,
    answer_target,
    rationale_target,
    reuters_text,
)
from tests.conftest import SHARED_DATA

LONGTAIL = SHARED_DATA / "longtail"
real_data = pytest.mark.skipif(not (LONGTAIL / "baldistill").exists(),
                               reason="real long-tail data not available (../shared/data/longtail)")
R52_LABELS = ["acq", "crude", "earn", "gold", "money-fx", "nat-gas", "gas", "retail", "trade", "tin", "lead"]


# --- parsing ------------------------------------------------------------------------------------------------------

# Ends of real MATH solutions (corpus.jsonl `org`) and their answers (`label`): nested braces in the
# box, a box with a space instead of braces, \left/\right, \dfrac, degrees written nearby.
MATH_SOLUTIONS = [
    (("Simplify the denominator first to obtain $\\frac{5}{\\sqrt{125}} = \\frac{5}{5\\sqrt{5}} = "
     "\\frac{1}{\\sqrt{5}} = \\boxed{\\frac{\\sqrt{5}}{5}}$."), "\\frac{\\sqrt{5}}{5}"),
    (("We have $$\\sqrt{\\frac{3}{8}} = \\frac{\\sqrt{3}}{\\sqrt{8}} = \\frac{\\sqrt{6}}{\\sqrt{16}} = "
     "\\boxed{\\frac{\\sqrt{6}}{4}}.$$"), "\\frac{\\sqrt{6}}{4}"),
    (("tain $-y=5\\cdot -\\frac{5}{9}+1=-\\frac{16}{9}$. So the intersection is "
     "$\\boxed{\\left(-\\frac{5}{9}, \\frac{16}{9}\\right)}$."), "\\left(-\\frac{5}{9}, \\frac{16}{9}\\right)"),
    ("so $a + b^2 = \\dfrac{3}{8} + \\dfrac{183}{64} = \\boxed{\\dfrac{207}{64}}.$", "\\dfrac{207}{64}"),
    (("Equality occurs when all the $\\theta_i$ are equal to $45^\\circ,$ so the maximum value is "
     "$\\boxed{\\frac{5}{2}}.$"), "\\frac{5}{2}"),
    ("So, $x^2 + y^2 + 2xy = x^2 + y^2 + 2(-4) = 1$. It follows that $x^2 + y^2 = \\boxed 9$.", "9"),
]


@pytest.mark.parametrize(("solution", "label"), MATH_SOLUTIONS)
def test_math_answer_is_the_last_box_with_nested_braces(solution, label):
    parsed = parse_answer(solution, "math")
    assert parsed == normalize_math_answer(label) and parsed is not None
    # The family's target format parses to the same answer, after the solution or alone.
    assert parse_answer(rationale_target(solution, parsed), "math") == parsed
    assert parse_answer(answer_target(parsed), "math") == parsed


def test_math_answer_line_of_a_stored_teacher_and_failures():
    # A stored ChatGPT rationale (math_chatgpt_cot_train_count_300.jsonl) ends "The answer is: X".
    stored = ("Thus, after 2007 steps of alternating rotations and reflections, the vertices are in the position "
              "CBAD. The answer is: \\text{CBAD}")
    assert parse_answer(stored, "math") == "CBAD"
    assert parse_answer("... = 54/256 = 27/128 after simplifying. The answer is: \\dfrac{27}{128}", "math") == \
        "\\frac{27}{128}"
    # The answer line of the target format wins over an earlier box; "the answer is correct" inside
    # a sentence does not override a box.
    assert parse_answer("so $x = \\boxed{3}$, then doubled.\nThe answer is 6.", "math") == "6"
    assert parse_answer("$x = \\boxed{-6}$. Check: the answer is correct.", "math") == "-6"
    assert parse_answer("We need more information about x.", "math") is None
    assert parse_answer("", "math") is None
    assert parse_answer("the box \\boxed{1 + 2 never closes", "math") is None


@pytest.mark.parametrize(("rationale", "expected"), [
    # Real R52 teacher rationales (r52_chatgpt_cot_train_*.jsonl) and their gold labels.
    (("The news story provided is about Viceroy Resource Corp detailing gold assays from drilling on the Lesley Ann "
     "deposit. Therefore, the appropriate topic to assign to this news story from the provided set is:gold"), "gold"),
    (("Based on the content, the appropriate topic to assign to this news story from the given set would be:earn "
     "(earnings)This topic is chosen because the news story is focused on the company's earnings report."), "earn"),
    (("The topic for this news story would be \"retail,\" as it relates to the sale of retail stores and is "
     "consistent with the company's retail division restructuring plans."), "retail"),
    ("The topic is \"dlr\" (dollar) since the story is about the exchange rate", None),  # dlr: not in R52_LABELS here
    (("ation is related to the financial performance and distributions of a company, which would fall under the topic "
     "of \"earn\" (earnings). It's specifically about the dividend payment.Therefore, the topic I would assign to "
     "this news story is: earn."), "earn"),
    (("The mention of the contribution from Adobe Resources Corp pertains to oil and gas prices, but since the focus "
     "is on the impact on earnings rather than the oil and gas industry itself, \"earn\" is the most suitable "
     "topic from the provided list."), "earn"),
    (("Topic: Not applicable (N/A)Rationale: The provided text does not contain sufficient information to assign a "
     "relevant topic from the given list."), None),
    # Our own answer line, in any case; a hyphenated label is never read as its last part.
    ("The story is about natural gas.\nThe answer is nat-gas.", "nat-gas"),
    ("The answer is Money-fx.", "money-fx"),
    # No cue, no quotes: one label mentioned is the answer, several are a parse failure, not a guess.
    ("A story about crude oil output in the gulf.", "crude"),
    ("Trade talks could lead to more tin exports.", None),
])
def test_label_parsing(rationale, expected):
    assert parse_answer(rationale, "label", R52_LABELS) == expected


@pytest.mark.parametrize(("text", "expected"), [
    # Real multiple-choice teacher rationales (multichoice-qa_chatgpt_cot_train_composed.jsonl).
    (("This variation in sunlight causes the change in seasons. Therefore, the answer is (B) the tilt of the Earth's "
     "axis."), "B"),
    ("The answer is (A) sending and receiving signals.", "A"),
    ("produces carbohydrates (glucose) and oxygen for the plant.  The answer is (B) Carbohydrates and (E) Glucose.",
     "B"),
    ("The answer is D.", "D"),
    ("Answer: (c)", "C"),
    ("(B) Heat the rusted area with a hair dryer.", "B"),
    ("B) Heat the rusted area", "B"),
    ("C", "C"),
    ("I think it is B", "B"),
    ("The answer is a house.", None),  # an article, not option A
    ("without further information, this conclusion is speculative.", None),
])
def test_choice_parsing(text, expected):
    assert parse_answer(text, "choice") == expected


def test_number_parsing_on_gsm8k_solutions():
    solution = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
                "in April and May.\n#### 72")
    assert parse_answer(solution, "number") == "72"
    assert parse_answer("The total is 1,000 + 80.\n#### 1,080", "number") == "1080"
    assert parse_answer("Janet makes 9 * 2 = $18 every day.\nThe answer is 18.", "number") == "18"
    assert parse_answer("She pays $2.50 each, 4 times: 10.00 dollars", "number") == "10"  # the last number
    assert parse_answer("The answer is $1,234.50.", "number") == "1234.5"
    assert parse_answer("I cannot tell.", "number") is None
    assert parse_answer(answer_target("-3"), "number") == "-3"


def test_normalisation_equivalences():
    same = [["\\dfrac{1}{2}", "\\frac12", "0.5", ".5", "1/2", "\\tfrac{1}{2}", "$\\frac{1}{2}$", "0.50"],
            ["90^\\circ", "90", "90^{\\circ}", "90."],
            ["\\$1,\\!657", "1657", "1,657"],
            ["\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"],
            ["x = 5", "5", "5.00"],
            ["10\\text{ cm}", "10"],
            ["\\text{CBAD}", "CBAD"],
            ["2\\sqrt3", "2\\sqrt{3}", "2 \\sqrt 3"],
            ["8\\sqrt{3} \\text { square inches}", "8\\sqrt{3}"],
            ["40\\%", "40"]]
    for group in same:
        assert len({normalize_math_answer(a) for a in group}) == 1, group
    assert normalize_math_answer("\\frac{1}{3}") != normalize_math_answer("0.3")
    assert normalize_math_answer("-2x+1") != normalize_math_answer("2x+1")
    assert [normalize_number(t) for t in ("1,080", "$5.50", "72.0", "-.5", "3", "50%", "abc", "")] == \
        ["1080", "5.5", "72", "-0.5", "3", "50", None, None]
    assert normalize_answer("Money-fx", "label", R52_LABELS) == "money-fx"
    assert normalize_answer("fx", "label", R52_LABELS) is None
    assert normalize_answer("(b)", "choice") == "B" and normalize_answer("B.", "choice") == "B"
    assert normalize_answer("", "math") is None and normalize_answer(None, "number") is None


@real_data
def test_math_normalisation_is_idempotent_and_reads_every_gold_solution():
    mismatched, total = [], 0
    for name in ("corpus.jsonl", "test_corpus.jsonl"):
        for line in (LONGTAIL / "baldistill" / "math" / name).open():
            row = json.loads(line)
            gold = normalize_math_answer(row["label"])
            assert normalize_math_answer(gold) == gold, row["label"]
            assert parse_answer(answer_target(gold), "math") == gold
            total += 1
            if parse_answer(row["org"], "math") != gold:
                mismatched.append(row["label"])
    # The three are MATH's own errors: the last box is not the label (or a solution boxes nothing).
    assert total == 9125 and sorted(mismatched) == ["36", "7", "y=-2x+1"]


# --- scorers ------------------------------------------------------------------------------------------------------


def examples_of(golds_and_groups) -> list[Example]:
    return [Example(f"e{i}", "prompt", answer_target(gold), group, {"answer": gold})
            for i, (gold, group) in enumerate(golds_and_groups)]


def test_accuracy_per_domain_macro_and_micro_with_parse_failures():
    # Domain a (head): 8 examples, 6 right; domain b (tail): 2 examples, one wrong, one unparsable.
    examples = examples_of([(str(i), "a") for i in range(8)] + [("7", "b"), ("9", "b")])
    predictions = [f"Because.\nThe answer is {i}." for i in range(6)] + ["The answer is 0.", "#### 1",
                                                                         "The answer is 8.", "no idea"]
    scores = AnswerAccuracyScorer("number").score(examples, predictions, "eval")
    m = scores.metrics
    assert m["eval/acc"] == pytest.approx(60.0) and m["eval/acc_micro"] == pytest.approx(60.0)
    assert m["eval/acc/a"] == pytest.approx(75.0) and m["eval/acc/b"] == 0.0
    assert m["eval/acc_macro"] == pytest.approx(37.5)  # the tail weighs as much as the head
    assert m["eval/parsed"] == pytest.approx(90.0) and m["eval/parsed/b"] == pytest.approx(50.0)
    assert (m["eval/n/a"], m["eval/n/b"]) == (8, 2)
    failure = scores.records[9]
    assert failure == {"prediction": "no idea", "answer": None, "gold": "9", "parsed": False, "acc": False,
                       "index": 9, "id": "e9", "group": "b"}
    assert scores.records[6]["answer"] == "0" and scores.records[6]["gold"] == "6"
    assert scores.table_metrics == ("acc",)


def test_math_accuracy_compares_normalised_answers():
    examples = examples_of([(normalize_math_answer("\\dfrac{1}{2}"), "Algebra"), ("90", "Geometry")])
    scores = AnswerAccuracyScorer("math").score(examples, ["$\\boxed{0.5}$", "The answer is 90^\\circ."], "eval")
    assert [r["acc"] for r in scores.records] == [True, True]


def test_label_f1_per_class_with_false_positives_from_other_classes():
    labels = ["earn", "acq", "trade", "gold"]
    golds = ["earn"] * 4 + ["acq"] * 2 + ["trade"] * 2
    examples = examples_of([(g, g) for g in golds])
    predictions = ["The answer is earn."] * 3 + ["The answer is acq."] + ["The answer is acq.", "The answer is Earn."] \
        + ["I am not sure.", "The answer is gold."]
    scores = LabelF1Scorer(labels).score(examples, predictions, "eval")
    m = scores.metrics
    # earn: TP 3 of 4 predicted (one acq example taken), of 4 gold: P = R = 0.75.
    assert m["eval/f1/earn"] == pytest.approx(75.0)
    # acq: TP 1 of 2 predicted (one earn example taken), of 2 gold.
    assert m["eval/f1/acq"] == pytest.approx(50.0)
    # trade: never right (a parse failure and a false positive of gold, a class absent from gold).
    assert m["eval/f1/trade"] == 0.0 and "eval/f1/gold" not in m
    assert m["eval/f1"] == pytest.approx((75 + 50 + 0) / 3) and m["eval/f1_macro"] == m["eval/f1"]
    # Micro: 7 predictions made, 4 right, 8 examples: P 4/7, R 4/8.
    assert m["eval/f1_micro"] == pytest.approx(100 * 2 * (4 / 7) * (4 / 8) / (4 / 7 + 4 / 8))
    assert m["eval/acc"] == pytest.approx(50.0) and m["eval/parsed"] == pytest.approx(87.5)
    assert m["eval/acc/earn"] == pytest.approx(75.0)  # per-class recall
    assert m["eval/acc_macro"] == pytest.approx((75 + 50 + 0) / 3)
    assert scores.table_metrics == ("acc", "f1")
    assert scores.records[6]["answer"] is None and scores.records[5]["answer"] == "earn"


def test_macro_and_micro_differ_on_a_skewed_set():
    golds = ["earn"] * 9 + ["acq"]
    examples = examples_of([(g, g) for g in golds])
    scores = LabelF1Scorer(["earn", "acq"]).score(examples, ["The answer is earn."] * 10, "eval")
    m = scores.metrics
    assert m["eval/acc"] == pytest.approx(90.0) and m["eval/f1_micro"] == pytest.approx(90.0)
    assert m["eval/f1/earn"] == pytest.approx(100 * 2 * 0.9 / 1.9) and m["eval/f1/acq"] == 0.0
    assert m["eval/f1"] == pytest.approx(100 * 0.9 / 1.9) and m["eval/acc_macro"] == pytest.approx(50.0)


def test_scorers_refuse_what_they_cannot_score():
    with pytest.raises(ValueError, match=r"1 examples have no gold number answer \(first: u\)"):
        AnswerAccuracyScorer("number").check([Example("u", "p", "no answer here")], "eval")
    with pytest.raises(ValueError, match="no label set"):
        LabelF1Scorer().check(examples_of([("earn", "earn")]), "eval")
    with pytest.raises(ValueError, match="kind must be one of"):
        AnswerAccuracyScorer("text")
    with pytest.raises(ValueError, match="needs the label set"):
        parse_answer("The answer is earn.", "label")


# --- the task -----------------------------------------------------------------------------------------------------


class TinySource:
    kind = "label"

    def splits(self):
        pool = [LongTailRecord("p1", "GOLD OUTPUT RISES. Mines said output rose in March.", "gold", "gold",
                               meta={"newid": 1}),
                LongTailRecord("p2", "EARNINGS UP. Net profit rose.", "earn", "earn", "It reports a profit.")]
        return {"train": pool, "test": [LongTailRecord("t1", "ACQ DEAL. A buys B.", "acq", "acq")]}

    def labels(self):
        return ["acq", "earn", "gold"]

    def describe(self):
        return "tiny R52"


def test_task_serves_pool_and_test_with_raw_text_and_gold_in_meta():
    task = LongTailTask(TinySource(), prompt="News: {text}\nTopic:", max_text_words=3)
    train, evaluation = task.load("train"), task.load("eval")
    first = train[0]
    assert (first.id, first.prompt, first.target, first.group) == ("p1", "News: GOLD OUTPUT RISES.\nTopic:",
                                                                    "The answer is gold.", "gold")
    assert first.meta == {"text": "GOLD OUTPUT RISES. Mines said output rose in March.", "answer": "gold",
                          "kind": "label", "newid": 1}
    assert train[1].meta["rationale"] == "It reports a profit."
    assert [e.id for e in evaluation] == ["t1"] and task.load("unlabeled") == []
    assert [r.id for r in task.records("train")] == ["p1", "p2"]
    scorer = task.scorer()
    assert isinstance(scorer, LabelF1Scorer) and scorer.labels == ["acq", "earn", "gold"]
    given = LongTailTask(TinySource(), scorer=LabelF1Scorer(group_by=None)).scorer()
    assert given.labels == ["acq", "earn", "gold"] and given.group_by is None
    with pytest.raises(ValueError, match=r"no split 'teacher'; it has \['test', 'train'\]"):
        task.records("teacher")
    with pytest.raises(ValueError, match="has no {text}"):
        LongTailTask(TinySource(), prompt="Topic:")
    with pytest.raises(ValueError, match=r"only the placeholder \{text\}.*KeyError\('story'\)"):
        LongTailTask(TinySource(), prompt="{story}: {text}")
    with pytest.raises(ValueError, match="parses 'math' answers"):
        LongTailTask(TinySource(), scorer=AnswerAccuracyScorer("math"))
    with pytest.raises(ValueError, match=r"no split 'valid' \(data.task.eval_split\)"):
        LongTailTask(TinySource(), eval_split="valid").load("eval")


# --- real data ----------------------------------------------------------------------------------------------------


@real_data
def test_math_real_files():
    splits = MathSource(str(LONGTAIL)).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 4125, "test": 5000}
    first = splits["train"][0]
    assert (first.id, first.text, first.answer, first.domain) == (
        "corpus.jsonl:1", "Which integer is closest to the cube root of 100?", "5", "Algebra")
    assert first.rationale.startswith("Either 4 or 5 is closest") and "\\boxed{5}" in first.rationale
    counts = {}
    for r in splits["train"]:
        counts[r.domain] = counts.get(r.domain, 0) + 1
    assert len(counts) == 7 and counts["Algebra"] == 1744 and counts["Precalculus"] == 187
    stored = MathSource(str(LONGTAIL), pool="stored").splits()["train"]
    assert len(stored) == 2100 and {r.id for r in stored} < {r.id for r in splits["train"]}


@real_data
def test_r52_pools_and_test_in_the_authors_text_form():
    root = str(LONGTAIL)
    source = R52Source(root)
    labels = source.labels()
    splits = source.splits()
    assert len(labels) == 52 and {"earn", "money-fx", "instal-debt"} <= set(labels)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4057, "test": 2557}
    assert {r.domain for r in splits["train"]} == set(labels) and all(r.domain == r.answer for r in splits["train"])
    assert not {r.text for r in splits["train"]} & {r.text for r in splits["test"]}
    test = splits["test"][0]
    assert test.id == "reuters:14826" and test.answer == "trade"
    assert test.text.startswith("ASIAN EXPORTERS FEAR DAMAGE FROM U.S.-JAPAN RIFT. Mounting trade friction between "
                                "the U.S. And Japan has raised") and "\n" not in test.text
    full = R52Source(root, pool="reuters").splits()["train"]
    assert len(full) == 6435
    # The test texts are formed as the authors formed their training texts: most of theirs are ours verbatim.
    theirs = [json.loads(line)["text"] for line in (LONGTAIL / "baldistill" / "r52" / "r52_count_50.jsonl").open()]
    ours = {r.text for r in full}
    assert sum(t in ours for t in theirs) / len(theirs) > 0.97
    assert reuters_text("A <B> C", "A <B> C. First line\n    second line.\n REUTER\n") == \
        "A &lt;B> C. First line second line."
    assert reuters_text("ONLY A TITLE", "ONLY A TITLE") == "ONLY A TITLE.  ONLY A TITLE"


@real_data
def test_mcqa_holds_out_a_seeded_stratified_test_split():
    splits = McqaSource(str(LONGTAIL)).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 4422, "test": 500}
    per_domain = {}
    for r in splits["test"]:
        per_domain[r.domain] = per_domain.get(r.domain, 0) + 1
    assert len(per_domain) == 10 and set(per_domain.values()) == {50}
    assert not {r.text for r in splits["train"]} & {r.text for r in splits["test"]}
    again, other = McqaSource(str(LONGTAIL)).splits(), McqaSource(str(LONGTAIL), seed=1).splits()
    assert [r.id for r in again["test"]] == [r.id for r in splits["test"]]
    assert {r.id for r in other["test"]} != {r.id for r in splits["test"]}
    first = next(r for r in splits["train"] + splits["test"] if r.id == "multichoice-qa_count_500.jsonl:1")
    assert first.answer == "F" and first.domain == "qasc" and first.meta["options"]["F"] == "elms"
    assert first.text.startswith("Question:what have woody stems covered with bark? \nChoice: (A) bamboo")
    with pytest.raises(ValueError, match="too few to hold out test_per_domain=200"):
        McqaSource(str(LONGTAIL), test_per_domain=200).splits()


@real_data
def test_gsm8k_rationale_without_calculator_notes_and_answer_line():
    splits = Gsm8kSource(str(LONGTAIL)).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 7473, "test": 1319}
    first = splits["train"][0]
    assert (first.id, first.answer, first.domain) == ("train.jsonl:1", "72", "gsm8k")
    assert first.rationale == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in "
                               "April and May.")
    records = splits["train"] + splits["test"]
    assert not any("<<" in r.rationale or "####" in r.rationale for r in records)
    assert all(normalize_number(r.answer) == r.answer for r in records)


@real_data
def test_stored_rationales_cover_the_stored_pool_and_synthetic_rows_are_not_real():
    root = str(LONGTAIL)
    source = R52Source(root)
    composed = "baldistill/r52/r52_chatgpt_cot_train_composed_downsample_count_50.jsonl"
    store = StoredRationales(root, list(source.stored_files), "label", real=source, synthetic_files=[composed],
                             synthetic_answer_field="label", synthetic_domain_field="label")
    pool = source.splits()["train"]
    assert all(r.text in store for r in pool)
    rationale, answer = store.lookup(pool[0].text)
    assert rationale and answer in source.labels()
    with pytest.raises(KeyError, match=r"'NOT A REUTERS STORY.*r52_chatgpt_cot_train_count_50\.jsonl"):
        store.lookup("NOT A REUTERS STORY. Nothing here.")
    real = {r.text for split in source.splits().values() for r in split}
    synthetic = [r for label in source.labels() for r in store.synthetic(label)]
    assert 1000 < len(synthetic) < 2173 and not {r.text for r in synthetic} & real
    assert len({r.text for r in synthetic}) == len(synthetic)
    assert all(r.meta["synthetic"] and r.rationale and r.domain == r.answer for r in synthetic)
    # The stored R52 predictions agree with the gold label less often than the scorer's parse of the rationale.
    parsed = StoredRationales(root, list(source.stored_files), "label", real=source, answer_from="rationale")
    agree = sum(store.lookup(r.text)[1] == r.answer for r in pool)
    agree_parsed = sum(parsed.lookup(r.text)[1] == r.answer for r in pool)
    assert agree / len(pool) < 0.65 and agree_parsed / len(pool) > 0.8


def test_stored_predictions_are_normalised_and_misses_are_loud(tmp_path):
    rows = [{"text": "DOLLAR FALLS. ", "rationale": "About currencies.", "prediction": "Money-fx", "label": "money-fx"},
            {"text": "DATE ONLY.", "rationale": "Cannot tell.", "prediction": "", "label": "earn"}]
    (tmp_path / "cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    composed = [{"text": "DOLLAR FALLS. ", "rationale": "r", "label": "money-fx", "prediction": "money-fx"},
                {"text": "NEW GOLD MINE.", "rationale": "About gold.", "label": "Gold", "prediction": "gold"},
                {"text": "NEW GOLD MINE.", "rationale": "again", "label": "gold", "prediction": "gold"}]
    (tmp_path / "composed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in composed))
    store = StoredRationales(str(tmp_path), ["cot.jsonl"], "label", labels=R52_LABELS,
                             synthetic_files=["composed.jsonl"], real=["DOLLAR FALLS. "],
                             synthetic_answer_field="label", synthetic_domain_field="label")
    assert store.lookup("DOLLAR FALLS. ") == ("About currencies.", "money-fx")
    assert store.lookup("DATE ONLY.") == ("Cannot tell.", None)
    with pytest.raises(KeyError, match=r"'DOLLAR FALLS\.' in \['cot\.jsonl'\]"):
        store.lookup("DOLLAR FALLS.")  # the raw text is the key: a stripped one is another text
    assert [(r.id, r.answer, r.domain) for r in store.synthetic("gold")] == [("composed.jsonl:2", "gold", "gold")]
    assert store.synthetic("money-fx") == [] and store.synthetic_domains() == {"gold": 1}
    (tmp_path / "math.jsonl").write_text(json.dumps({"text": "t", "rationale": "r", "prediction": "\\dfrac{1}{2}"}))
    assert StoredRationales(str(tmp_path), ["math.jsonl"], "math").lookup("t") == ("r", "\\frac{1}{2}")


# --- configs and bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "kind"), [("math", "math"), ("r52", "label"), ("mcqa", "choice"),
                                              ("gsm8k", "number")])
def test_longtail_configs_compose(option, kind, tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data={option}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    spec = instantiate(cfg.data, _convert_="object")
    task = spec.task
    assert isinstance(task, LongTailTask) and task.kind == kind and task.source.root == f"{cfg.paths.data_dir}/longtail"
    assert "{text}" in task.prompt and task.prompt.endswith(":") and spec.decoding.strategy == "greedy"
    assert spec.validation_targets == "gold" and spec.max_target_tokens >= spec.decoding.max_new_tokens - 64
    scorer = task.scorer()  # built without reading a file: the labels are read when scoring starts
    assert isinstance(scorer, LabelF1Scorer if kind == "label" else AnswerAccuracyScorer) and scorer.kind == kind
    assert scorer.table_metrics[0] == "acc"
    if (LONGTAIL / "baldistill").exists():
        assert task.load("eval") and task.load("train")[0].target.startswith("The answer is ")
        assert (len(scorer.labels) == 52) if kind == "label" else scorer.labels is None


def test_bad_files_are_named_with_line_and_field(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": "so 4\n#### 4"}) + "\n"
                                                    + json.dumps({"question": "q?", "answer": "it is 5"}) + "\n")
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q?", "answer": "#### five"}) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl: line 2: 'answer' has no '#### <number>' line"):
        Gsm8kSource(str(tmp_path)).splits()
    with pytest.raises(ValueError, match=r"test\.jsonl: line 1: the '####' line holds 'five', not a number"):
        Gsm8kSource(str(tmp_path), train_file="gsm8k/test.jsonl").splits()

    (tmp_path / "mc.jsonl").write_text(json.dumps({"text": "Question:q \nChoice: (A) x (B) y", "label": "C",
                                                   "domain": "arc"}) + "\n")
    with pytest.raises(ValueError, match=r"mc\.jsonl: line 1: 'label' 'C' is not one of the question's options"):
        McqaSource(str(tmp_path), file="mc.jsonl").splits()

    math = tmp_path / "math"
    math.mkdir()
    (math / "train.jsonl").write_text('{"text": "1+1?", "label": "2", "org": "\\\\boxed{2}", "source": "Algebra"}\n'
                                      '{"text": "2+2?", "label": "4", "org": "\\\\boxed{4}"\n')
    with pytest.raises(ValueError, match=r"train\.jsonl: line 2 is not valid JSON"):
        MathSource(str(tmp_path), train_file="math/train.jsonl").splits()
    (math / "train.jsonl").write_text('{"text": "1+1?", "label": "2", "org": "\\\\boxed{2}"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl: line 1: 'source' must be non-empty text, got NoneType"):
        MathSource(str(tmp_path), train_file="math/train.jsonl").splits()

    (tmp_path / "labels.txt").write_text("0\ttrain\tearn\n1\ttest\tacq\n")
    (tmp_path / "cot.jsonl").write_text(json.dumps({"text": "A. b", "label": "grain", "rationale": "r"}) + "\n")
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"cot\.jsonl: line 1: 'label' 'grain' is not one of the label set"):
        R52Source(str(tmp_path), stored_files=["cot.jsonl"], test_file="test.jsonl", labels_file="labels.txt").splits()


def test_a_missing_copy_names_the_folder_and_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder \(data\.task\.source\.root\)"):
        LongTailTask(MathSource(str(tmp_path / "nowhere"))).load("eval")
    with pytest.raises(FileNotFoundError, match=r"r52_train\.jsonl: file not found \(data\.task\.source\.root="):
        R52Source(str(tmp_path), labels_file=None).splits()
    with pytest.raises(ValueError, match="pool must be 'stored' or 'reuters'"):
        R52Source(str(tmp_path), pool="all")
