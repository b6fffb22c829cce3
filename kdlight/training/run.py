"""Everything around the loop, on typed objects: tokenizer choice, fit, save, decode, score, write.

Outputs of one run (in Hydra's run folder):
  model/             the trained model and its tokenizer (HF format: a later run's `path`)
  checkpoints/       Lightning checkpoints (student only), `last.ckpt` for resuming
  metrics.json       every final metric, the step time and the run's identity; `benchmarks` lists
                     each benchmark's name, metrics prefix and table metrics, in order
  predictions.jsonl  one scored prediction per evaluation example (predictions_<name>.jsonl for
                     each extra benchmark)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import lightning as L
from transformers import PreTrainedTokenizerBase

from kdlight.data.tokenizer import TokenizerSpec, has_tokenizer, load_tokenizer, train_tokenizer
from kdlight.models.build import ModelSpec, count_parameters, save_model
from kdlight.training.callbacks import StepTimer
from kdlight.training.module import DistillationModule

log = logging.getLogger(__name__)


def resolve_tokenizer(spec: TokenizerSpec, models: list[ModelSpec], training_texts, save_dir: Path) -> PreTrainedTokenizerBase:
    """An explicit tokenizer path; else the one saved with a model we start from; else train one."""
    if spec.path is not None:
        return load_tokenizer(spec.path)
    for model in models:
        if has_tokenizer(model.path):
            log.info(f"using the tokenizer saved with {model.name} at {model.path}")
            return load_tokenizer(model.path)
    log.info(f"training a byte-level BPE tokenizer ({spec.vocab_size} tokens) on the training text")
    tokenizer = train_tokenizer(training_texts, spec.vocab_size, spec.split_digits)
    tokenizer.save_pretrained(save_dir)
    return load_tokenizer(save_dir)  # reload so name_or_path points at the saved copy


def fit_and_evaluate(module: DistillationModule, trainer: L.Trainer, datamodule, output_dir: Path,
                     identity: dict, benchmarks: dict | None = None) -> dict:
    """Fit (resuming from `checkpoints/last.ckpt` if present), save, then decode and score the
    evaluation split and every extra benchmark (evaluation-only data modules, e.g. Spider-DK)."""
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, StepTimer))
    last = output_dir / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    fit_s = time.perf_counter() - started
    # A final held-out pass, so every run reports val/* for its final weights whatever the
    # validation interval was.
    validation = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    if trainer.is_global_zero:
        save_model(module.student, module.tokenizer, output_dir / "model")
    evaluations = {identity["data"]: ("eval", datamodule, "predictions.jsonl")}
    for name, benchmark in (benchmarks or {}).items():
        benchmark.prepare_data()
        benchmark.connect(module.tokenizer)
        benchmark.setup()
        evaluations[name] = (name, benchmark, f"predictions_{name}.jsonl")
    scores, index = {}, []
    for name, (prefix, data, file) in evaluations.items():
        outputs = trainer.predict(module, dataloaders=data.predict_dataloader())
        if trainer.is_global_zero:
            decoded = {i: module.tokenizer.decode(ids, skip_special_tokens=True).strip()
                       for batch in outputs for i, ids in batch}
            metrics, records = data.evaluate(decoded, prefix)
            scores |= metrics
            index.append({"name": name, "prefix": prefix, "metrics": list(data.report_metrics)})
            with open(output_dir / file, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    if not trainer.is_global_zero:
        return {}
    metrics = {**identity, "params": count_parameters(module.student), "steps": trainer.global_step,
               "step_time_s": timer.median_step_s, "fit_time_s": fit_s, **validation, **scores, "benchmarks": index}
    write_json_atomic(output_dir / "metrics.json", metrics)
    for logger in trainer.loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=trainer.global_step)
        logger.save()
    return metrics


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
