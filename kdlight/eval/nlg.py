"""NLG metrics as the papers compute them: SacreBLEU, Google's ROUGE, optionally BERTScore.

Each metric comes from its reference implementation, never re-implemented, because their
tokenisation and smoothing rules decide the numbers papers compare:
- BLEU: `sacrebleu` (13a tokenisation, exponential smoothing, case-sensitive). The table value is
  the corpus BLEU over the set, with every reference of every example (a varying number of
  references per example is given to sacrebleu as None-padded reference streams, which it skips:
  signature `nrefs:var`). Corpus BLEU is not a mean of sentence scores, so each per-example record
  holds `sacrebleu.sentence_bleu` under the same key `bleu`, for paired per-example tests only.
- ROUGE-1/2/L: `rouge_score` with the Porter stemmer (as Calderon et al. 2023 report it),
  F-measure; with several references, the best per example (`RougeScorer.score_multi`).
- BERTScore F1: the `bert_score` package with a model the user names (`bertscore_model`, a local
  folder or hub name; no default, since the score depends on the model and its layer).

Per-example values are in percent (0-100), so their mean is the reported value and the paired
permutation test (kdlight.report.paired) compares percentages. An empty prediction scores 0.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import statistics
from collections.abc import Sequence
from typing import Any

from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from kdlight.data.example import Example
from kdlight.eval.scorer import Scorer, Scores

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def references(example: Example) -> list[str]:
    """Every reference of `example`: `meta["references"]`, else its target."""
    refs = example.meta.get("references")
    if refs is None:
        refs = [] if example.target is None else [example.target]
    return list(refs)


def corpus_bleu(predictions: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float, str]:
    """SacreBLEU over a corpus with any number of references per example, and its signature."""
    if not predictions:
        return 0.0, ""
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]  # None: no k-th reference
    bleu = BLEU()
    return bleu.corpus_score(list(predictions), streams).score, str(bleu.get_signature())


class NlgScorer(Scorer):
    """BLEU (corpus), ROUGE-1/2/L and, with a scoring model, BERTScore F1.

    Args:
        bertscore_model: a model folder or hub name for BERTScore; None: no BERTScore column (one
            log line says so).
        bertscore_layers: which layer's embeddings BERTScore compares (`num_layers` of
            `bert_score.score`); None: the model's last layer (bert_score knows defaults only for
            the hub models it lists, not for a folder).
        bertscore_batch_size: sentences per BERTScore batch.
        group_by: per-group results (`group`, or a `meta` key), with macro and micro averages.
    """

    def __init__(self, bertscore_model: str | None = None, bertscore_layers: int | None = None,
                 bertscore_batch_size: int = 64, group_by: str | None = None):
        self.bertscore_model, self.bertscore_layers = bertscore_model, bertscore_layers
        self.bertscore_batch_size, self.group_by = bertscore_batch_size, group_by
        installed = importlib.util.find_spec("bert_score") is not None
        self.with_bertscore = bertscore_model is not None and installed
        if bertscore_model is None:
            self._skip_note = "BERTScore not computed: no scoring model named (data.task.scorer.bertscore_model)"
        elif not installed:
            self._skip_note = ("BERTScore not computed: the bert_score package is not installed "
                               "(pip install 'kdlight[bertscore]')")
        extra = ("bertscore",) if self.with_bertscore else ()
        self.per_example = ("bleu", *ROUGE_TYPES, *extra)
        self.table_metrics = ("bleu", "rougeL", "rouge1", "rouge2", *extra)
        self._rouge = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
        self._noted = False

    def check(self, examples: Sequence[Example], name: str) -> list[str]:
        if missing := [e.id for e in examples if not references(e) or not all(r.strip() for r in references(e))]:
            raise ValueError(f"{len(missing)} examples have no reference text (first: {missing[0]}); every "
                             "example scored by BLEU/ROUGE needs a non-empty target or meta['references']")
        return []

    def score_examples(self, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
        records = []
        for example, prediction in zip(examples, predictions):
            refs = references(example)
            rouge = self._rouge.score_multi(refs, prediction)
            record = {"prediction": prediction, "references": refs,
                      "bleu": BLEU(effective_order=True).sentence_score(prediction, refs).score}
            records.append(record | {name: 100.0 * rouge[name].fmeasure for name in ROUGE_TYPES})
        if self.with_bertscore:
            for record, f1 in zip(records, self._bertscore([r["prediction"] for r in records],
                                                           [r["references"] for r in records])):
                record["bertscore"] = 100.0 * f1
        elif not self._noted:  # once per scorer, not per evaluation set
            (log.info if self.bertscore_model is None else log.warning)(self._skip_note)
            self._noted = True
        return records

    def _bertscore(self, predictions: list[str], refs: list[list[str]]) -> list[float]:
        """BERTScore F1 (best over the references) per prediction. An empty prediction gets 0, as
        bert_score itself documents, without being passed in: bert_score 0.3.13 fails on empty
        text with transformers 5."""
        import bert_score
        from transformers import AutoConfig

        layers = self.bertscore_layers or AutoConfig.from_pretrained(self.bertscore_model).num_hidden_layers
        scored = [i for i, p in enumerate(predictions) if p.strip()]
        f1 = [0.0] * len(predictions)
        if scored:
            _, _, f = bert_score.score([predictions[i] for i in scored], [refs[i] for i in scored],
                                       model_type=self.bertscore_model, num_layers=layers,
                                       batch_size=self.bertscore_batch_size)
            for i, value in zip(scored, f.tolist()):
                f1[i] = value
        return f1

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        """Corpus BLEU over `records` (works on any subset: per-group results call it per group),
        the mean of every other per-example value."""
        metrics: dict[str, float] = {"n": len(records)}
        metrics["bleu"] = corpus_bleu([r["prediction"] for r in records], [r["references"] for r in records])[0]
        for name in (n for n in self.per_example if n != "bleu"):
            metrics[name] = statistics.fmean(float(r[name]) for r in records) if records else 0.0
        return metrics

    def score(self, examples: Sequence[Example], predictions: Sequence[str], prefix: str) -> Scores:
        scores = super().score(examples, predictions, prefix)
        records = scores.records
        scores.settings["sacrebleu_signature"] = corpus_bleu([r["prediction"] for r in records],
                                                             [r["references"] for r in records])[1]
        return scores

    def settings(self) -> dict[str, Any]:
        versions = {name: importlib.metadata.version(package) for name, package in
                    (("sacrebleu", "sacrebleu"), ("rouge_score", "rouge-score"), ("bert_score", "bert-score"))
                    if name != "bert_score" or self.with_bertscore}
        return {"scorer": "nlg", "bleu": "sacrebleu corpus BLEU (per-example records: sentence BLEU)",
                "rouge": "rouge_score F-measure, Porter stemmer, best reference", "versions": versions,
                "bertscore": ({"model": self.bertscore_model, "layers": self.bertscore_layers, "value": "F1"}
                              if self.with_bertscore else None)}
