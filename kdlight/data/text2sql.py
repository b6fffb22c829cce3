"""The text-to-SQL data module: Spider-format examples -> tokenised prompts and SQL targets.

The loss is on the SQL tokens only (the prompt is the schema and question). The tokenizer is bound
late with `connect`, because a trained tokenizer needs the training text first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from kdlight.data.batch import collate
from kdlight.data.resumable import EpochBatchSampler, ResumableLoader
from kdlight.data.spider import LoadReport, PromptParts, SpiderSource, SqlExample, load_examples
from kdlight.data.sqlgen import GeneratorSpec, ensure_generated
from kdlight.eval.text2sql import ExecutionLimits, ScoreItem, score_predictions, score_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratedSource:
    """The project's own generated Spider-format data, built once into `cache_dir`."""

    spec: GeneratorSpec
    cache_dir: str

    def resolve(self) -> SpiderSource:
        return SpiderSource(str(ensure_generated(self.spec, self.cache_dir)))


class Text2SQLDataModule(L.LightningDataModule):
    """Spider-format text-to-SQL for any model: the same batches feed causal and seq2seq LMs.

    Args:
        source: where the data lives (`SpiderSource`, or `GeneratedSource` built on demand).
        prompt: which parts of the schema prompt to include.
        batch_size: examples per optimisation step (per device).
        eval_batch_size: examples per evaluation batch (teacher-forced loss and decoding).
        max_prompt_tokens: longer prompts lose their start (the schema), keeping the question.
        max_target_tokens: longer targets are cut (counted and logged).
        limit_train: use only the first N training examples (None: all).
        limit_eval: evaluate on the first N evaluation examples (None: all).
        num_workers: DataLoader workers.
        comparator: execution-accuracy comparator (`test_suite`, `spider`, `bird`).
        limits: per-query time limit and row cap for executing predictions.
        eval_workers: processes that execute SQL in parallel.
        seed: order of the training data, shared by every method so comparisons are fair.
        report_metrics: the scores a comparison table may show for this data (BIRD: no TS, as
            in the KID paper: one database per question).
    """

    def __init__(self, source: SpiderSource | GeneratedSource, prompt: PromptParts, batch_size: int = 32,
                 eval_batch_size: int = 64, max_prompt_tokens: int = 512, max_target_tokens: int = 128,
                 limit_train: int | None = None, limit_eval: int | None = None, num_workers: int = 0,
                 comparator: str = "test_suite", limits: ExecutionLimits = ExecutionLimits(),
                 eval_workers: int = 2, seed: int = 0, report_metrics: tuple[str, ...] = ("ex", "ts", "em")):
        super().__init__()
        self.source, self.prompt = source, prompt
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.max_prompt_tokens, self.max_target_tokens = max_prompt_tokens, max_target_tokens
        self.limit_train, self.limit_eval = limit_train, limit_eval
        self.num_workers, self.seed = num_workers, seed
        self.comparator, self.limits, self.eval_workers = comparator, limits, eval_workers
        self.report_metrics = tuple(report_metrics)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[SqlExample] = []
        self.eval_examples: list[SqlExample] = []
        self.reports: list[LoadReport] = []
        self._encoded: dict[str, list[tuple[list[int], list[int]]]] = {}

    def prepare_data(self) -> None:
        self.source.resolve()  # generates the data once, on one process

    def load(self) -> None:
        """Read both splits (idempotent); needed before a tokenizer can be trained."""
        if self.eval_examples or self.train_examples:
            return
        source = self.source.resolve()
        self.eval_examples, eval_report = load_examples(source, source.eval_file, self.prompt)
        self.eval_examples = self.eval_examples[: self.limit_eval]
        self.reports = [eval_report]
        if source.train_file is not None:  # None: an evaluation-only benchmark
            self.train_examples, train_report = load_examples(source, source.train_file, self.prompt)
            self.train_examples = self.train_examples[: self.limit_train]
            self.reports.insert(0, train_report)
        for report in self.reports:
            log.info(report.summary())

    def training_texts(self):
        self.load()
        for example in self.train_examples:
            yield example.prompt
            yield example.query

    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self._encoded:
            return
        if self.tokenizer is None:
            raise RuntimeError("Text2SQLDataModule.connect(tokenizer) must be called before setup()")
        self.load()
        for name, examples in (("train", self.train_examples), ("eval", self.eval_examples)):
            self._encoded[name] = self._encode(name, examples)

    def _encode(self, name: str, examples: list[SqlExample]) -> list[tuple[list[int], list[int]]]:
        tok = self.tokenizer
        if not examples:
            return []
        prompts = tok([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
        targets = tok([e.query for e in examples], add_special_tokens=False)["input_ids"]
        cut_p = sum(len(p) + 1 > self.max_prompt_tokens for p in prompts)
        cut_t = sum(len(t) + 1 > self.max_target_tokens for t in targets)
        if cut_p or cut_t:
            log.warning(f"{name}: {cut_p} prompts cut to {self.max_prompt_tokens} tokens (schema start dropped), "
                        f"{cut_t} targets cut to {self.max_target_tokens} tokens")
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        return [((bos + p)[-self.max_prompt_tokens:], t[: self.max_target_tokens - 1] + [tok.eos_token_id])
                for p, t in zip(prompts, targets)]

    def train_prompts(self) -> list[tuple[int, list[int]]]:
        """(index, prompt ids) of every training example: what teacher-output sources decode."""
        return [(i, p) for i, (p, _) in enumerate(self._encoded["train"])]

    def _examples(self, name: str) -> list[tuple[list[int], list[int], int]]:
        return [(p, t, i) for i, (p, t) in enumerate(self._encoded[name])]

    def _collate_fn(self):
        return partial(_collate, pad_id=self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        """Seeded per-epoch order, resumable mid-epoch, sharded by rank (see kdlight.data.resumable)."""
        trainer = self.trainer
        sampler = EpochBatchSampler(len(self._encoded["train"]), self.batch_size, self.seed,
                                    epoch=lambda: trainer.current_epoch if trainer else 0,
                                    rank=lambda: (trainer.global_rank, trainer.world_size) if trainer else (0, 1))
        processed = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
        return ResumableLoader(self._examples("train"), sampler, processed, num_workers=self.num_workers,
                               collate_fn=self._collate_fn())

    def _eval_loader(self) -> DataLoader:
        """Every rank sees every evaluation example; rank 0 scores them all."""
        return DataLoader(self._examples("eval"), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=self._collate_fn())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()


    def evaluate(self, predictions: dict[int, str], prefix: str = "eval") -> tuple[dict[str, float], list[dict]]:
        """Score decoded SQL by evaluation-example index: metrics and one record per example."""
        items = [ScoreItem(predictions.get(i, ""), e.query, str(e.db_path) if e.db_path else None,
                           tuple(str(p) for p in e.suite), e.hardness) for i, e in enumerate(self.eval_examples)]
        report, scores = score_predictions(items, self.comparator, self.limits, self.eval_workers)
        records = [{"index": i, "question": e.question, **score_record(item, score)}
                   for i, (e, item, score) in enumerate(zip(self.eval_examples, items, scores))]
        return report.as_metrics(prefix), records


def _collate(items: list[tuple[list[int], list[int], int]], pad_id: int):
    prompts, targets, index = zip(*items)
    return collate(list(prompts), list(targets), list(index), pad_id)
