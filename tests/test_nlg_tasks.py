"""NLG tasks and metrics: BLEU/ROUGE/BERTScore equal the libraries' own results, the labeled /
unlabeled split, the generated task, and every real-data loader on the real files and on bad ones."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import sacrebleu
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict
from rouge_score import rouge_scorer

from kdlight.cli.train import CONFIG_DIR
from kdlight.data.example import Example
from kdlight.eval.nlg import NlgScorer
from kdlight.tasks.nlg import (
    ArtSource,
    E2ESource,
    NlgGenSource,
    NlgRecord,
    NlgTask,
    ShakespeareSource,
    SquadQGSource,
    XSumSource,
)
from tests.conftest import SHARED_DATA

NLG = SHARED_DATA / "nlg"
real_data = pytest.mark.skipif(not NLG.exists(), reason="real NLG data not available (../shared/data/nlg)")

# (prediction, references): one and several references, an exact match, an empty prediction.
PAIRS = [
    ("the cat sat on the mat .", ["the cat is sitting on the mat .", "a cat sat on a mat ."]),
    ("Running dogs were barking loudly", ["The dog runs and barks loudly"]),
    ("I have half a mind to hit you .", ["I have half a mind to hit you before you speak again ."]),
    ("There is a cheap pub by the river.", ["A cheap pub is by the river.", "By the river is a cheap pub.",
                                            "The riverside pub is cheap."]),
    ("", ["Nothing was said ."]),
    ("Blue Spice is a coffee shop.", ["Blue Spice is a coffee shop."]),
    ("the dog", ["the dog barks ."]),  # shorter than a 4-gram: sentence BLEU's effective order matters
]


def examples_of(pairs, groups=None) -> list[Example]:
    return [Example(f"e{i}", "prompt", refs[0], None, {"references": refs, "domain": (groups or {}).get(i)})
            for i, (_, refs) in enumerate(pairs)]


def scored(scorer: NlgScorer, pairs, prefix: str = "eval"):
    return scorer.score(examples_of(pairs, {i: "ab"[i % 2] for i in range(len(pairs))}), [p for p, _ in pairs], prefix)


def test_bleu_and_rouge_are_the_libraries_own():
    scores = scored(NlgScorer(), PAIRS)
    google = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for record, (prediction, refs) in zip(scores.records, PAIRS):
        best = {k: max(google.score(r, prediction)[k].fmeasure for r in refs) for k in ("rouge1", "rouge2", "rougeL")}
        assert {k: record[k] for k in best} == pytest.approx({k: 100 * v for k, v in best.items()})
        assert record["bleu"] == pytest.approx(sacrebleu.sentence_bleu(prediction, refs).score)
    # Corpus BLEU with 1-3 references per example: sacrebleu given every stream filled (a repeated
    # reference changes neither the clipped counts nor the closest length) must agree.
    width = max(len(r) for _, r in PAIRS)
    streams = [[r[k] if k < len(r) else r[0] for _, r in PAIRS] for k in range(width)]
    expected = sacrebleu.corpus_bleu([p for p, _ in PAIRS], streams).score
    assert scores.metrics["eval/bleu"] == pytest.approx(expected) and 0 < expected < 100
    assert scores.metrics["eval/bleu"] != pytest.approx(sum(r["bleu"] for r in scores.records) / len(PAIRS))
    assert scores.metrics["eval/rougeL"] == pytest.approx(sum(r["rougeL"] for r in scores.records) / len(PAIRS))
    assert scores.table_metrics == ("bleu", "rougeL", "rouge1", "rouge2")
    assert scores.settings["sacrebleu_signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp")
    assert scores.settings["versions"]["sacrebleu"] == sacrebleu.__version__
    empty, exact = scores.records[4], scores.records[5]
    assert (empty["bleu"], empty["rouge1"], empty["rougeL"]) == (0.0, 0.0, 0.0)
    assert exact["bleu"] == pytest.approx(100.0) and exact["rougeL"] == pytest.approx(100.0)


def test_groups_get_corpus_bleu_of_their_own_examples():
    scorer = NlgScorer(group_by="domain")
    metrics = scored(scorer, PAIRS, "x").metrics
    for group, members in (("a", PAIRS[0::2]), ("b", PAIRS[1::2])):  # scored() puts example i in group "ab"[i % 2]
        refs = [r for _, r in members]
        streams = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(max(map(len, refs)))]
        expected = sacrebleu.corpus_bleu([p for p, _ in members], streams).score
        assert metrics[f"x/bleu/{group}"] == pytest.approx(expected)
        assert metrics[f"x/n/{group}"] == len(members)
    assert metrics["x/bleu_macro"] == pytest.approx((metrics["x/bleu/a"] + metrics["x/bleu/b"]) / 2)
    assert metrics["x/bleu_micro"] == metrics["x/bleu"]
    assert metrics["x/rouge2_micro"] == pytest.approx(metrics["x/rouge2"])


def test_an_example_without_references_is_refused_before_training():
    with pytest.raises(ValueError, match="no reference text.*first: u"):
        NlgScorer().check([Example("u", "prompt", None)], "eval")


def test_bertscore_column_only_with_a_named_model(caplog):
    scorer = NlgScorer()
    with caplog.at_level(logging.INFO, logger="kdlight.eval.nlg"):
        first, second = scored(scorer, PAIRS), scored(scorer, PAIRS[:2])
    assert "bertscore" not in first.table_metrics and not any("bertscore" in k for k in first.metrics)
    assert "bertscore" not in first.records[0] and first.settings["bertscore"] is None
    notes = [r for r in caplog.records if "BERTScore" in r.getMessage()]
    assert len(notes) == 1 and "bertscore_model" in notes[0].getMessage() and second.metrics


def test_bertscore_without_its_package_is_left_out_with_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "bert_score", None)  # how Python marks a module that cannot be imported
    scorer = NlgScorer(bertscore_model="/models/any")
    with caplog.at_level(logging.INFO, logger="kdlight.eval.nlg"):
        scores = scored(scorer, PAIRS)
        scored(scorer, PAIRS)
    assert "bertscore" not in scores.table_metrics and "bertscore" not in scores.records[0]
    notes = [r for r in caplog.records if "BERTScore" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING and "not installed" in notes[0].getMessage()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT and a word-piece tokenizer over the test sentences' words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = sorted({w for p, refs in PAIRS for text in [p, *refs] for w in text.lower().replace(".", " .").split()})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=64)  # bert_score cuts at model_max_length
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_bertscore_is_bert_score_own_f1(tiny_bert):
    import bert_score

    scores = scored(NlgScorer(bertscore_model=tiny_bert), PAIRS)
    kept = [i for i, (p, _) in enumerate(PAIRS) if p]  # bert_score 0.3.13 cannot take an empty text (0 by definition)
    _, _, f1 = bert_score.score([PAIRS[i][0] for i in kept], [PAIRS[i][1] for i in kept], model_type=tiny_bert,
                                num_layers=2)
    assert [scores.records[i]["bertscore"] for i in kept] == pytest.approx([100 * v for v in f1.tolist()])
    assert scores.records[4]["bertscore"] == 0.0
    assert scores.table_metrics[-1] == "bertscore" and scores.settings["versions"]["bert_score"]
    assert scores.metrics["eval/bertscore"] == pytest.approx(sum(r["bertscore"] for r in scores.records) / len(PAIRS))


# --- the labeled / unlabeled split and the generated task --------------------------------------------------


def test_labeled_and_unlabeled_split_the_training_pool():
    source = NlgGenSource(n_train=60, n_valid=10, n_test=12, seed=3)
    task = NlgTask(source, labeled=20, split_seed=1, prompt="{input}\nText:")
    train, unlabeled, evaluation = task.load("train"), task.load("unlabeled"), task.load("eval")
    assert (len(train), len(unlabeled), len(evaluation)) == (20, 40, 12)
    pool = {r.id for r in source.splits()["train"]}
    labeled_ids, unlabeled_ids = {e.id for e in train}, {e.id for e in unlabeled}
    assert labeled_ids | unlabeled_ids == pool and not labeled_ids & unlabeled_ids
    assert all(e.target is None and "references" not in e.meta for e in unlabeled)
    assert all(e.target == e.meta["references"][0] and e.prompt.endswith("\nText:") for e in train + evaluation)
    assert [e.id for e in NlgTask(source, labeled=20, split_seed=1).load("train")] == [e.id for e in train]
    assert {e.id for e in NlgTask(source, labeled=20, split_seed=2).load("train")} != {e.id for e in train}
    none = NlgTask(source, labeled=0)
    assert none.load("train") == [] and len(none.load("unlabeled")) == 60
    every = NlgTask(source, labeled=None)
    assert len(every.load("train")) == 60 and every.load("unlabeled") == []
    assert [e.id for e in NlgTask(source, eval_split="valid").load("eval")] == [f"valid:{i}" for i in range(1, 11)]
    with pytest.raises(ValueError, match=r"labeled=61.*has 60 inputs"):
        NlgTask(source, labeled=61).load("train")
    with pytest.raises(ValueError, match=r"no held-out split 'dev'.*\['test', 'valid'\]"):
        NlgTask(source, eval_split="dev").load("eval")
    with pytest.raises(ValueError, match="no {input}"):
        NlgTask(source, prompt="Translate:")
    with pytest.raises(ValueError, match=r"only the placeholder \{input\}.*literal brace"):
        NlgTask(source, prompt="{input} {")


def test_several_references_expand_into_labeled_examples():
    class TwoSplits:
        def splits(self):
            return {"train": [NlgRecord("a", "x", ("one", "two")), NlgRecord("b", "y", ("three",))],
                    "test": [NlgRecord("t", "z", ("four", "five"))]}

        def describe(self):
            return "two splits"

    task = NlgTask(TwoSplits(), expand_references=True)
    assert sorted((e.id, e.target) for e in task.load("train")) == [("a:ref0", "one"), ("a:ref1", "two"),
                                                                     ("b:ref0", "three")]
    assert [(e.target, e.meta["references"]) for e in task.load("eval")] == [("four", ["four", "five"])]


def test_generated_task_is_deterministic_with_several_references():
    spec = {"n_train": 300, "n_valid": 30, "n_test": 40}
    first, again = NlgGenSource(**spec).splits(), NlgGenSource(**spec).splits()
    other = NlgGenSource(**spec, seed=1).splits()
    assert first == again and first["test"] != other["test"]
    assert {k: len(v) for k, v in first.items()} == {"train": 300, "valid": 30, "test": 40}
    records = [r for split in first.values() for r in split]
    assert len({r.input for r in records}) == len(records)  # every MR once: held-out inputs are new
    assert all(len(set(r.references)) == 4 for r in records)
    assert {r.meta["style"] for r in first["train"]} == {0, 1, 2, 3}  # the target is not always one style
    record = first["train"][0]
    assert record.input.startswith("name[") and record.input.split("[")[1].split("]")[0] in record.references[0]
    assert max(len(t.split()) for r in records for t in (r.input, *r.references)) < 30
    with pytest.raises(ValueError, match="at most"):
        NlgGenSource(n_train=100_000)


# --- real data ----------------------------------------------------------------------------------------------


@real_data
def test_shakespeare_real_files():
    splits = ShakespeareSource(str(NLG / "shakespeare")).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 18395, "valid": 1218, "test": 1462}
    first = splits["train"][0]
    assert (first.id, first.input, first.references) == (
        "train:1", "I have a mind to strike thee ere thou speak'st .",
        ("I have half a mind to hit you before you speak again .",))


@real_data
def test_squad_qg_real_file_is_split_by_paragraph():
    splits = SquadQGSource(str(NLG / "squad_qg")).splits()
    assert sum(map(len, splits.values())) == 4330 and len(splits["test"]) >= 500 and len(splits["valid"]) >= 300
    items = json.loads((NLG / "squad_qg" / "squad_qg_4330.json").read_text())
    context = {r.id: items[int(r.id) - 1]["context"] for split in splits.values() for r in split}
    train = {context[r.id] for r in splits["train"]}
    assert not train & {context[r.id] for r in splits["test"] + splits["valid"]}
    record = splits["train"][0]
    item = items[int(record.id) - 1]
    assert record.input == f"{item['context']}; answer: {item['answer']}" and record.references == (item["question"],)


@real_data
def test_art_real_file_targets_the_labeled_hypothesis():
    splits = ArtSource(str(NLG / "art")).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 1032, "valid": 200, "test": 300}
    rows = {row["story_id"]: row for row in map(json.loads, (NLG / "art" / "alphanli_dev_1532.jsonl").open())}
    for record in splits["test"][:20]:
        row = rows[record.id]
        assert record.references == (row[f"hyp{row['label']}"],)
        assert record.input == f"{row['obs1']}; outcome: {row['obs2']}"


@real_data
def test_xsum_real_file_cuts_documents():
    splits = XSumSource(str(NLG / "xsum"), max_document_words=50).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 699, "valid": 100, "test": 200}  # one empty document
    assert max(len(r.input.split()) for split in splits.values() for r in split) == 50
    full = {r.id: r for r in XSumSource(str(NLG / "xsum"), max_document_words=None).splits()["train"]}
    record = splits["train"][0]
    assert full[record.id].input.startswith(record.input) and full[record.id].references == record.references


@real_data
def test_e2e_real_files_group_references_by_mr():
    splits = E2ESource(str(NLG / "e2e")).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 497, "valid": 50, "test": 630}
    assert sum(len(r.references) for r in splits["train"] + splits["valid"]) == 4672
    assert sum(len(r.references) for r in splits["test"]) == 4693
    test = splits["test"][0]
    assert test.input == "name[Blue Spice], eatType[coffee shop], area[city centre]" and len(test.references) > 1
    task = NlgTask(E2ESource(str(NLG / "e2e")), labeled=100, expand_references=True)
    labeled_inputs = {e.id.rsplit(":ref", 1)[0] for e in task.load("train")}
    assert len(labeled_inputs) == 100 and len(task.load("unlabeled")) == 397


def compose_data(option: str, tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data={option}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    return cfg, instantiate(cfg.data, _convert_="object")


@pytest.mark.parametrize("option", ["nlggen", "shakespeare", "squad_qg", "art", "xsum", "e2e"])
def test_nlg_configs_compose(option, tmp_path):
    cfg, spec = compose_data(option, tmp_path)
    task = spec.task
    assert isinstance(task, NlgTask) and task.prompt.startswith("{input}\n") and task.prompt.endswith(":")
    assert spec.decoding.strategy == "beam" and spec.decoding.num_beams == 4
    if option == "nlggen":
        sizes = len(task.load("train")), len(task.load("unlabeled")), len(task.load("eval"))
        assert sizes == (500, 2500, 200)
    else:
        assert task.source.root == f"{cfg.paths.data_dir}/nlg/{option}"


# --- bad input ------------------------------------------------------------------------------------------------


def test_bad_files_are_named_with_line_and_field(tmp_path):
    (tmp_path / "train.original.nltktok").write_text("a\nb\nc\n")
    (tmp_path / "train.modern.nltktok").write_text("A\nB\n")
    with pytest.raises(ValueError, match=r"train\.original\.nltktok has 3 lines but .*train\.modern\.nltktok has 2"):
        ShakespeareSource(str(tmp_path)).splits()
    (tmp_path / "train.modern.nltktok").write_text("A\n \nC\n")
    with pytest.raises(ValueError, match=r"train\.modern\.nltktok: line 2 is empty"):
        ShakespeareSource(str(tmp_path)).splits()

    (tmp_path / "squad.json").write_text(json.dumps([{"context": "c", "question": "q?", "answer": "a"},
                                                     {"context": "c", "answer": "a"}]))
    with pytest.raises(ValueError, match=r"squad\.json: item 2: 'question' must be non-empty text, got NoneType"):
        SquadQGSource(str(tmp_path), file="squad.json").splits()

    good = {"obs1": "o1", "obs2": "o2", "hyp1": "h1", "hyp2": "h2", "label": 1}
    (tmp_path / "art.jsonl").write_text(json.dumps(good) + "\n\n" + json.dumps(good | {"label": 3}) + "\n")
    with pytest.raises(ValueError, match=r"art\.jsonl: line 3: 'label' must be 1 or 2.*got 3"):
        ArtSource(str(tmp_path), file="art.jsonl").splits()

    (tmp_path / "xsum.jsonl").write_text('{"id": "1", "document": "d", "summary": "s"}\n{"id": 2,\n')
    with pytest.raises(ValueError, match=r"xsum\.jsonl: line 2 is not valid JSON"):
        XSumSource(str(tmp_path), file="xsum.jsonl").splits()

    (tmp_path / "dev.csv").write_text('mr,ref\n"name[A], food[Thai]",A serves Thai food.\n"name[B]",\n')
    (tmp_path / "test.csv").write_text("meaning,text\nx,y\n")
    with pytest.raises(ValueError, match=r"dev\.csv: line 3: 'ref' must be non-empty text"):
        E2ESource(str(tmp_path), train_file="dev.csv", test_file="test.csv").splits()
    (tmp_path / "dev.csv").write_text('mr,ref\n"name[A], food[Thai]",A serves Thai food.\n"name[B]",B.\n')
    with pytest.raises(ValueError, match=r"test\.csv: no column \['mr', 'ref'\]"):
        E2ESource(str(tmp_path), train_file="dev.csv", test_file="test.csv", n_valid=0).splits()


def test_a_missing_copy_names_the_folder_and_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder \(data\.task\.source\.root\)"):
        NlgTask(E2ESource(str(tmp_path / "nowhere"))).load("eval")
    with pytest.raises(FileNotFoundError, match=r"valid\.original\.nltktok: file not found"):
        (tmp_path / "train.original.nltktok").write_text("a\n")
        (tmp_path / "train.modern.nltktok").write_text("A\n")
        ShakespeareSource(str(tmp_path)).splits()
