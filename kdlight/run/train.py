"""`train(run, out)`: build what a `Run` names, fit, save, evaluate; no Hydra needed.

Outputs of one run, in `out`:
  model/             the trained model and its tokenizer (HF format: a later run's `path`)
  checkpoints/       `last.ckpt` (student only), written atomically; a re-run in the same folder
                     resumes from it and ends exactly as an uninterrupted run would
  metrics.json       every final metric, the step time and the run's identity; `benchmarks` lists
                     each evaluation set's name, metrics prefix, table metrics, scoring settings
                     and notes, in order
  predictions.jsonl  one scored prediction per evaluation example (predictions_<name>.jsonl for
                     each extra benchmark)
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.module import TaskDataModule, target_ids
from kdlight.data.tokenizer import resolve_tokenizer, saved_tokenizer
from kdlight.io import read_json, write_json
from kdlight.methods.base import Method, PrepareContext
from kdlight.models.build import ModelSpec, build_model, count_parameters, save_model
from kdlight.models.lora import add_lora, merged
from kdlight.models.vocab import ModelVocab, VocabularyMismatch, add_mask_token, shared_vocab_size
from kdlight.processes import prepare_compute
from kdlight.run.evaluate import score_eval_sets
from kdlight.run.spec import Run, RunResult
from kdlight.targets.store import TargetStore
from kdlight.training.callbacks import StepTimer
from kdlight.training.checkpoint_io import AtomicCheckpointIO
from kdlight.training.module import DistillationModule
from kdlight.training.teacher import LiveTeacher, StoredTeacher, StoredTeacherSpec, Teacher
from kdlight.training.teacher_cache import CachedSparseTeacher, check_cacheable, with_missing_mass

log = logging.getLogger(__name__)


def train(run: Run, out: str | Path) -> RunResult:
    """Train `run.student` with `run.method`, evaluate it, and write everything to `out`."""
    out = Path(out)
    if run.skip_finished and (out / "metrics.json").exists():
        log.info(f"{out} already has metrics.json (skip_finished): not run again")
        return RunResult(read_json(out / "metrics.json"), out, out / "model", reused=True)
    _check_something_to_train(run)
    _check_select_by(run)
    L.seed_everything(run.seed, workers=True)
    prepare_compute(run.threads)
    teacher_spec = run.teacher if (run.method.needs_teacher or run.teacher_kl) else None
    _check_teacher(run, teacher_spec)
    method = _check_teacher_cache(run, teacher_spec)
    datamodule = TaskDataModule(run.data, run.data_name, run.benchmarks, seed=run.seed,
                                use_unlabeled=run.method.uses_unlabeled,
                                gold_pairs_and_inputs=run.method.keeps_gold_pairs)
    datamodule.load()  # every split and benchmark now, so a missing copy fails before training
    if not datamodule.train_examples and not datamodule.unlabeled_examples:
        raise ValueError(f"data '{run.data_name}': nothing to train on: no training examples "
                         f"(data.limit_train={run.data.limit_train}) [{run.data.task.describe()}]")
    if isinstance(teacher_spec, StoredTeacherSpec) and run.method.divergence is not None and \
            run.method.keeps_gold_pairs and datamodule.train_examples:
        raise ValueError(f"method '{run.method.name}' also distils on the gold pairs ({len(datamodule.train_examples)} "
                         f"labeled examples), which the stored teacher ({teacher_spec.path}) cannot score: use a live "
                         "teacher, or the no-label setting (data.task.labeled=0: its outputs are the only targets)")
    model_paths = [s.weights for s in (run.student, teacher_spec) if isinstance(s, ModelSpec)]
    tokenizer = resolve_tokenizer(run.tokenizer, model_paths, datamodule.training_texts(), out / "tokenizer")
    datamodule.connect(tokenizer)
    student = build_model(run.student, tokenizer)
    teacher = _build_teacher(teacher_spec, run, tokenizer)
    vocab_size = _shared_vocab(run, tokenizer, student, teacher_spec, teacher)
    if run.data.validation_targets == "teacher":
        _validate_on_teacher_outputs(datamodule, teacher, tokenizer, vocab_size, run, out)
    if run.student.lora is not None:  # after the vocabulary is settled: a mask token's new row stays frozen
        student = add_lora(student, run.student.lora)
        log.info(f"LoRA adapters r={run.student.lora.r} on {run.student.lora.target_modules}: "
                 f"{sum(p.numel() for p in student.parameters() if p.requires_grad):,} trainable parameters")
    teacher_params = count_parameters(teacher.model) if isinstance(teacher, LiveTeacher) else None
    if run.teacher_cache is not None and isinstance(teacher, LiveTeacher):
        teacher = CachedSparseTeacher(teacher, run.teacher_cache.top_k, vocab_size, run.teacher_cache.cache_dir)
    module = DistillationModule(student, method, tokenizer, vocab_size, run.optimizer, run.loop, teacher,
                                seed=run.seed, decoding=run.data.decoding)
    trainer = _trainer(run, out)
    for experiment_logger in trainer.loggers:  # the whole configuration, so every run says what it was
        experiment_logger.log_hyperparams(dict(run.config or {"method": run.method.name, "student": run.student.name}))
    identity = {"method": run.method.name, "label": run.label or run.method.name, "stage": run.stage,
                "model": run.student.name, "data": run.data_name, "seed": run.seed,
                "teacher": teacher_spec.name if teacher_spec is not None else None,
                "teacher_params": teacher_params}
    log.info(f"{run.stage} {run.student.name} ({count_parameters(student):,} parameters) with {run.method.name}"
             + (f", teacher {teacher.describe()}" if teacher is not None else ""))
    metrics = fit_and_evaluate(module, trainer, datamodule, out, identity, run.select_by)
    return RunResult(metrics, out, out / "model")


def _drop_hpc_checkpoints(out: Path) -> None:
    """Remove Lightning's SLURM requeue checkpoints (`hpc_ckpt_<n>.ckpt`) from the run folder.

    With `requeue_owner=lightning`, Lightning saves one when SLURM signals the job, at whatever
    point of a step the signal lands; under SLURM it then loads that file by itself into every
    later `fit`, `validate` or `predict` called without a checkpoint path, so the final evaluation
    would score the signalled weights instead of the trained ones (found on a real cluster:
    tests/test_slurm.py). kdlight resumes from checkpoints/last.ckpt, written between steps, which
    ends a run exactly as an uninterrupted one; the HPC file is removed before anything can load it.
    """
    for path in sorted(out.glob("*hpc_ckpt_*")):  # with any staging file of an interrupted save
        path.unlink(missing_ok=True)  # every rank may try; the first one removes it
        log.info(f"removed {path.name}: the run resumes from checkpoints/last.ckpt, and Lightning would load "
                 "the HPC file's weights into the evaluation")


def fit_and_evaluate(module: DistillationModule, trainer: L.Trainer, datamodule: TaskDataModule, out: Path,
                     identity: dict, select_by: str | None = None) -> dict:
    """Fit (resuming from `checkpoints/last.ckpt` if present), save, then decode and score every
    evaluation set (with `select_by`, the weights of the best validation). Returns the metrics
    (empty on ranks other than 0)."""
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, StepTimer))
    last = out / "checkpoints" / "last.ckpt"
    _drop_hpc_checkpoints(out)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    _drop_hpc_checkpoints(out)  # one written by a signal during this fit: the evaluation below must not load it
    # The end of fit, its last validation done: a run killed during the evaluation below resumes
    # from here (the periodic checkpoint of the last step precedes that validation and the loops'
    # end-of-epoch bookkeeping).
    if not trainer.fast_dev_run:  # a smoke test leaves no checkpoint, as Lightning's own
        trainer.save_checkpoint(last)
    fit_s = timer.fit_s  # earlier attempts of a resumed run included
    selected = _load_best(module, trainer, select_by) if select_by else {}
    module.student = merged(module.student)  # LoRA: evaluate and save the plain model
    # A final held-out pass, so every run reports val/* for its final weights whatever the
    # validation interval was.
    validation = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    if trainer.is_global_zero:
        save_model(module.student, module.tokenizer, out / "model")

    def decode(eval_set) -> dict[int, list[int]]:
        outputs = trainer.predict(module, dataloaders=datamodule.eval_loader(eval_set))
        return {i: ids for batch in outputs for i, ids in batch}

    if not trainer.is_global_zero:
        for eval_set in datamodule.eval_sets:  # every rank decodes (collective with a sharded teacher)
            decode(eval_set)
        return {}
    scores, index = score_eval_sets(datamodule.eval_sets, decode, module.tokenizer, out)
    metrics = {**identity, "params": count_parameters(module.student), "steps": trainer.global_step,
               "step_time_s": timer.median_step_s, "timed_steps": len(timer.times), "fit_time_s": fit_s, **selected,
               **validation, **scores, "benchmarks": index}
    write_json(out / "metrics.json", metrics)
    for logger in trainer.loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=trainer.global_step)
        logger.save()
    return metrics


# kdlight's training step optimises by hand (micro-batches normalised by the global token count, a
# check for a non-finite loss before the update), and a periodic checkpoint holds the state after
# that update, which is what a resumed run needs: Lightning warns about that on every checkpoint.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


SELECTABLE = ("val/ce", "val/kl_from_teacher")  # logged at every validation; lower is better


def _trainer(run: Run, out: Path) -> L.Trainer:
    """A Trainer with what resuming needs (a periodic atomic `last.ckpt`) and the step timer, and a
    `best.ckpt` kept by the validation metric `select_by`."""
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=run.checkpoint_every_n_steps)
    selection = []
    if run.select_by:
        selection = [ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=run.select_by, mode="min",
                                     save_top_k=1, save_last=False, save_weights_only=True,
                                     enable_version_counter=False)]
    # kdlight's train loader shards by rank itself (and resumes mid-epoch): no DistributedSampler.
    return L.Trainer(**run.trainer, default_root_dir=out, logger=run.logger or False, use_distributed_sampler=False,
                     callbacks=[checkpoint, *selection, StepTimer(), *run.callbacks],
                     plugins=[AtomicCheckpointIO(), *run.plugins])


def _load_best(module: DistillationModule, trainer: L.Trainer, metric: str) -> dict:
    """Put the weights of the best validation into `module` (model selection, e.g. before the
    paper's final fine-tuning stage); returns what metrics.json records about the choice."""
    best = next(cb for cb in trainer.checkpoint_callbacks if cb.monitor == metric)
    if not best.best_model_path or not Path(best.best_model_path).exists():
        log.warning(f"select_by={metric}: no best checkpoint (no validation ran during training, see "
                    "trainer.val_check_interval, or checkpoints/best.ckpt was removed): the last weights are kept")
        return {"selected_step": trainer.global_step}
    checkpoint = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    loaded = module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    if loaded.unexpected_keys or not checkpoint["state_dict"]:
        raise KeyError(f"{best.best_model_path} does not hold this run's weights ({len(loaded.unexpected_keys)} "
                       "unexpected keys): it was written by another run")
    log.info(f"select_by={metric}: the weights of step {checkpoint['global_step']} ({metric} "
             f"{float(best.best_model_score):.4f}) are saved and scored, not the last ones")
    return {"selected_step": checkpoint["global_step"], f"selected_{metric.replace('/', '_')}": float(best.best_model_score)}


def _check_something_to_train(run: Run) -> None:
    steps, epochs = run.trainer.get("max_steps", -1), run.trainer.get("max_epochs")
    if steps == 0 or (steps in (-1, None) and epochs == 0):
        raise ValueError(f"trainer.max_steps={steps}, trainer.max_epochs={epochs}: nothing to train. To score a "
                         "model without training it, use kdlight-eval (or kdlight.evaluate from Python)")


def _check_select_by(run: Run) -> None:
    if run.select_by is not None and run.select_by not in SELECTABLE:
        raise ValueError(f"select_by must be one of {SELECTABLE} (validation metrics, lower is better) or null, "
                         f"got '{run.select_by}'")
    live_teacher = isinstance(run.teacher, ModelSpec) and (run.method.needs_teacher or run.teacher_kl)
    if run.select_by == "val/kl_from_teacher" and not live_teacher:
        raise ValueError("select_by=val/kl_from_teacher needs a live teacher model in the run (a method that uses it, "
                         "or teacher_kl=true); a stored teacher cannot score the validation targets")


def _check_teacher(run: Run, spec: ModelSpec | StoredTeacherSpec | None) -> None:
    if run.method.needs_teacher and spec is None:
        raise ValueError(f"method '{run.method.name}' needs a teacher: set one (a model, or a file of its outputs)")
    if isinstance(spec, StoredTeacherSpec):
        source = run.method.source
        if run.method.divergence is not None and not source.only_teacher_outputs:
            raise ValueError(f"method '{run.method.name}' compares the student with the teacher on sequences that are "
                             f"not the teacher's own outputs; a stored teacher ({spec.path}) has distributions only "
                             "for those: use a live teacher, or a method on its outputs (seqkd, seqkd_fkl)")
        if run.teacher_kl:
            raise ValueError("teacher_kl needs a live teacher (a stored one cannot score the evaluation targets)")
    strategy = run.trainer.get("strategy")
    if run.student.lora is not None and "fsdp" in str(getattr(strategy, "__class__", "")).lower() + str(strategy).lower():
        raise ValueError("student.lora with trainer=fsdp is not supported (merging adapters into sharded weights); "
                         "use trainer=ddp: a LoRA student's gradients and optimiser state are small")
    if isinstance(spec, ModelSpec) and spec.lora is not None:
        raise ValueError(f"teacher '{spec.name}': lora adapts the model a run trains; the teacher is frozen "
                         "(to fine-tune the teacher with LoRA, run stage=teacher with teacher.lora)")
    if isinstance(spec, ModelSpec) and spec.path is None and run.method.needs_teacher:
        log.warning(f"method {run.method.name} distils from a randomly initialised teacher: set teacher.path=<teacher "
                    "run>/model to distil from a trained one")


def _check_teacher_cache(run: Run, spec: ModelSpec | StoredTeacherSpec | None) -> Method:
    """The run's method, its divergence set to the cache's `missing_mass`; a method or teacher the
    cache cannot serve is refused before anything is loaded."""
    if run.teacher_cache is None:
        return run.method
    check_cacheable(run.method, run.loop.teacher_placement)
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"teacher_cache.top_k caches a teacher model's distributions; this teacher ({spec}) is "
                         "a file of stored outputs, top-k already: set teacher_cache.top_k=null")
    return with_missing_mass(run.method, run.teacher_cache.missing_mass)


def _build_teacher(spec: ModelSpec | StoredTeacherSpec | None, run: Run,
                   tokenizer: PreTrainedTokenizerBase) -> Teacher | None:
    if spec is None:
        return None
    if isinstance(spec, StoredTeacherSpec):
        def encode(text: str) -> list[int]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return target_ids(ids, run.data.max_target_tokens, tokenizer.eos_token_id)

        teacher = StoredTeacher(TargetStore.load(spec.path, encode), spec.path)
        if run.method.divergence is not None:
            teacher.require_log_probs(f"method '{run.method.name}'")
        return teacher
    return LiveTeacher(build_model(spec, tokenizer, frozen=True), run.loop.teacher_placement, run.method.teacher_dropout)


def _validate_on_teacher_outputs(datamodule: TaskDataModule, teacher: Teacher | None,
                                 tokenizer: PreTrainedTokenizerBase, vocab_size: int, run: Run, out: Path) -> None:
    """The no-label setting: the validation inputs' targets are the teacher's outputs (a stored
    teacher's, looked up; a live teacher's, decoded with the evaluation decoding), so held-out CE
    and model selection (`select_by`) never see gold."""
    if teacher is None:
        raise ValueError("data.validation_targets=teacher validates on the teacher's outputs, but this run loads no "
                         f"teacher (method '{run.method.name}'): use a method with a teacher, or teacher_kl=true")
    datamodule.connect(tokenizer)
    if run.trainer.get("accelerator") != "cpu" and torch.cuda.is_available():
        teacher.to(torch.device("cuda", torch.cuda.current_device()))  # where the run will place it anyway
    ctx = PrepareContext(datamodule.validation_prompts(), teacher, tokenizer, vocab_size)
    # Cached in the run's folder: a resumed run reads them back (every rank decodes the whole set).
    outputs = teacher.outputs(ctx, run.data.decoding, batch_size=run.data.eval_batch_size, seed=run.seed,
                              cache_dir=str(out))
    datamodule.set_validation_targets({i: sequences[0].ids for i, sequences in outputs.items()})
    log.info(f"validation targets: the teacher's outputs for {len(outputs)} validation inputs (no gold)")


def _shared_vocab(run: Run, tokenizer: PreTrainedTokenizerBase, student: PreTrainedModel,
                  teacher_spec: ModelSpec | StoredTeacherSpec | None, teacher: Teacher | None) -> int:
    """The vocabulary teacher and student share (a mask token is added first if the method needs one)."""
    entries = [ModelVocab(run.stage, student, saved_tokenizer(run.student.weights))]
    if isinstance(teacher, LiveTeacher):
        entries.append(ModelVocab("teacher", teacher.model, saved_tokenizer(teacher_spec.weights)))
    vocab_size = shared_vocab_size(tokenizer, entries)
    if isinstance(teacher, StoredTeacher) and teacher.store.vocab_size not in (None, vocab_size):
        raise VocabularyMismatch(f"the stored teacher outputs ({teacher.path}) use a {teacher.store.vocab_size}-token "
                                 f"vocabulary, the run's tokenizer has {vocab_size}")
    models = [m for m in (student, teacher.model if isinstance(teacher, LiveTeacher) else None) if m is not None]
    if run.method.source.needs_mask_token and add_mask_token(tokenizer, models):
        vocab_size = len(tokenizer)
        log.info(f"the tokenizer had no mask token: added {tokenizer.mask_token} (id {tokenizer.mask_token_id}) for "
                 f"{run.method.name}; it is saved with the student's tokenizer")
    return vocab_size
