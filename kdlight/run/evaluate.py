"""Scoring decoded predictions on every evaluation set, and evaluating a model without training.

`score_eval_sets` is the one place where decoded token ids become text, scores, prediction files
and the `benchmarks` index of metrics.json: training runs (after `fit`) and `kdlight-eval` (a saved,
pretrained or untrained model: the zero-shot baseline) both go through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.module import DataSpec, EvalSet, TaskDataModule
from kdlight.data.tokenizer import TokenizerSpec, has_tokenizer, resolve_tokenizer
from kdlight.io import write_json, write_jsonl
from kdlight.models.build import ModelSpec, build_model, count_parameters
from kdlight.models.decoding import Decoding, predictions
from kdlight.models.vocab import ModelVocab, shared_vocab_size
from kdlight.processes import prepare_compute
from kdlight.run.spec import RunResult
from kdlight.tasks.base import Task

log = logging.getLogger(__name__)

Decoded = dict[int, list[int]]  # example index -> generated token ids


def score_eval_sets(eval_sets: list[EvalSet], decode: Callable[[EvalSet], Decoded], tokenizer: PreTrainedTokenizerBase,
                    out: Path) -> tuple[dict[str, float], list[dict]]:
    """Decode, score and write predictions for every evaluation set.

    Returns the metrics (`<prefix>/<name>`) and the `benchmarks` index of metrics.json: per set its
    name, metrics prefix, the metrics a table shows, how it was scored, notes for a reader (from
    the scorer's check at load time) and its predictions file.
    """
    metrics: dict[str, float] = {}
    index = []
    for eval_set in eval_sets:
        ids = decode(eval_set)
        predictions = [tokenizer.decode(ids.get(i, []), skip_special_tokens=True).strip()
                       for i in range(len(eval_set.examples))]
        scores = eval_set.task.scorer().score(eval_set.examples, predictions, eval_set.prefix)
        metrics |= scores.metrics
        index.append({"name": eval_set.name, "prefix": eval_set.prefix, "metrics": list(scores.table_metrics),
                      "settings": scores.settings, "notes": eval_set.notes, "predictions": eval_set.predictions_file})
        write_jsonl(out / eval_set.predictions_file, scores.records)
    return metrics, index


@torch.no_grad()
def decode_all(model: PreTrainedModel, loader, decoding: Decoding, tokenizer: PreTrainedTokenizerBase,
               vocab_size: int, device: torch.device) -> Decoded:
    """Decode every batch of `loader` (the first returned sequence per example)."""
    model.eval()
    decoded: Decoded = {}
    for batch in loader:
        batch = batch.to(device)
        decoded.update(predictions(model, batch, decoding, tokenizer.eos_token_id, tokenizer.pad_token_id, vocab_size))
    return decoded


@dataclass
class EvalRun:
    """A model scored on a task without training.

    Attributes:
        data: the task (its eval split is scored), loader settings and decoding.
        model: the model (a saved run's `model/`, a pretrained folder, or a random-init size).
        benchmarks: evaluation-only tasks scored as well, by name.
        tokenizer: where the tokenizer comes from (default: the model's own, else trained).
        seed: random initialisation of an untrained model.
        threads: torch CPU threads (None: torch's default).
        device: `cpu` or `cuda`.
        data_name, label: how the run is named in metrics.json and tables (label default: the
            model's name, or `untrained` for a random-init size).
    """

    data: DataSpec
    model: ModelSpec
    benchmarks: Mapping[str, Task] = field(default_factory=dict)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    data_name: str = "data"
    label: str | None = None


def evaluate(run: EvalRun, out: str | Path) -> RunResult:
    """Score `run.model` on every evaluation set; writes metrics.json and the prediction files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(run.seed, workers=True)
    prepare_compute(run.threads)
    # The training text is read only to train a tokenizer for a model that has none.
    needs_text = run.tokenizer.path is None and not has_tokenizer(run.model.weights)
    datamodule = TaskDataModule(run.data, run.data_name, run.benchmarks, seed=run.seed, use_train=needs_text)
    datamodule.load()
    tokenizer = resolve_tokenizer(run.tokenizer, [run.model.weights], datamodule.training_texts(), out / "tokenizer")
    datamodule.connect(tokenizer)
    datamodule.setup()
    if run.model.lora is not None:
        raise ValueError(f"model '{run.model.name}': lora adapts a model for training; kdlight-eval scores a model "
                         "as it is (a LoRA run's model/ has its adapters merged: evaluate that)")
    model = build_model(run.model, tokenizer, frozen=True)
    vocab_size = shared_vocab_size(tokenizer, [ModelVocab("model", model)])
    device = torch.device(run.device)
    model.to(device)
    started = time.perf_counter()
    metrics, index = score_eval_sets(
        datamodule.eval_sets,
        lambda s: decode_all(model, datamodule.eval_loader(s), run.data.decoding, tokenizer, vocab_size, device),
        tokenizer, out)
    label = run.label or ("untrained" if run.model.path is None else run.model.name)
    identity = {"method": "none", "label": label, "stage": "eval", "model": run.model.name,
                "data": run.data_name, "seed": run.seed, "teacher": None}
    result = {**identity, "params": count_parameters(model), "steps": 0, "eval_time_s": time.perf_counter() - started,
              **metrics, "benchmarks": index}
    write_json(out / "metrics.json", result)
    log.info("scores: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k.split("/")[-1] in
                                    {m for entry in index for m in entry["metrics"]}))
    return RunResult(result, out, None)
