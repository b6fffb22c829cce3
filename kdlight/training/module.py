"""`DistillationModule`: one LightningModule, one loop, every method (the unit is a comparison).

Each optimisation step:
1. the method's sequence source turns the gold batch into the sequences to learn on;
2. the global target-token counts of the step are taken (all micro-batches, all ranks);
3. for each micro-batch: the loss terms (`kdlight.training.objective`), each summed over its
   tokens and divided by its global count, then backward;
4. clip, optimiser step, scheduler step; each loss term is logged separately (`train/ce`,
   `train/kd_<divergence>`), on the steps the loggers write; `step_metrics` has the last step's.

Manual optimisation is used because step 2 needs the whole step's batch before the first backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from peft import PeftModel
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.batch import Batch
from kdlight.data.module import TaskDataModule
from kdlight.losses import forward_kl, token_cross_entropy
from kdlight.methods.base import Method, PrepareContext, StepContext
from kdlight.models.decoding import Decoding, predictions
from kdlight.models.lm import set_training, take_positions, target_logits, target_positions
from kdlight.models.lora import trainable_state_keys
from kdlight.training.csv_log import ResumableCSVLogger
from kdlight.training.objective import micro_batch_loss
from kdlight.training.teacher import LiveTeacher, Teacher


class NonFiniteLossError(FloatingPointError):
    pass


@dataclass(frozen=True)
class LoopOptions:
    """How the shared loop optimises.

    Attributes:
        micro_batch_size: split each step's batch into micro-batches of this size (gradient
            accumulation with exact global-token normalisation); None: no split.
        grad_clip: clip the gradient norm to this value; None: no clipping.
        warmup_steps: linear learning-rate warm-up.
        min_lr_ratio: cosine decay ends at this fraction of the peak learning rate.
        teacher_placement: `replicate` (a full teacher per rank) or `shard` (FSDP2 across ranks,
            1/world of its memory per rank; see kdlight.training.teacher).
        fused_head: form the logits of target positions chunk by chunk inside the loss for
            students with a plain output head (kdlight.training.objective); false: full logits.
    """

    micro_batch_size: int | None = None
    grad_clip: float | None = 1.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    teacher_placement: str = "replicate"
    fused_head: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.fused_head, bool):
            raise ValueError(f"loop.fused_head must be true or false, got {self.fused_head!r}")


class DistillationModule(L.LightningModule):
    """The student, trained with `method`, against a frozen teacher when the method needs one.

    Args:
        student: the model to train.
        method: sequence source x divergence x CE weight.
        tokenizer: the shared tokenizer.
        vocab_size: the vocabulary teacher and student share (padding rows excluded).
        optimizer: builds the optimiser from the student's trainable parameters.
        options: how the loop optimises.
        teacher: a `Teacher`, or a model (wrapped as a live teacher with `options.teacher_placement`
            and the method's `teacher_dropout`), or None.
        seed: seeds the source's random numbers (masks, sampling draws).
        decoding: how predictions are decoded (`predict_step`).
    """

    def __init__(self, student: PreTrainedModel, method: Method, tokenizer: PreTrainedTokenizerBase,
                 vocab_size: int, optimizer: Callable[..., torch.optim.Optimizer], options: LoopOptions,
                 teacher: Teacher | PreTrainedModel | None = None, seed: int = 0, decoding: Decoding = Decoding()):
        super().__init__()
        if isinstance(teacher, PreTrainedModel):
            teacher = LiveTeacher(teacher, options.teacher_placement, method.teacher_dropout)
        if method.needs_teacher and teacher is None:
            raise ValueError(f"method '{method.name}' needs a teacher, but none was given")
        self.automatic_optimization = False
        self.student = student
        self.teacher = teacher
        self.method, self.tokenizer, self.vocab_size = method, tokenizer, vocab_size
        self.optimizer_factory, self.options, self.decoding = optimizer, options, decoding
        self.source_rng = torch.Generator().manual_seed(seed)
        # A LoRA student checkpoints only its adapters; the frozen base is rebuilt from its config,
        # so loading is not strict (on_load_checkpoint checks the keys itself).
        self.adapters_only = isinstance(student, PeftModel)
        self.strict_loading = not self.adapters_only
        # The entry point logs the whole resolved config; these keys must not collide with it.
        self.save_hyperparameters({"method_name": method.name, "shared_vocab_size": vocab_size})
        self.step_metrics: dict[str, float] = {}  # the last training step's `train/*` values
        self._written_step = -1  # the step of the last row written to the loggers

    # --- placement -------------------------------------------------------------------------------
    def _place_teacher(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_fit_start(self) -> None:
        self._place_teacher()
        self.student.train()  # HF from_pretrained returns eval-mode models
        if self.method.source.needs_preparation:
            self.method.source.prepare(self._prepare_context())
        if self.teacher is not None:  # a cached teacher scores the training sequences once, here
            self.teacher.prepare(self.method, self._training_sequences, _gather_objects)

    def _prepare_context(self) -> PrepareContext:
        """Every training prompt, for sources that precompute targets (teacher outputs)."""
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, TaskDataModule):
            raise RuntimeError(f"method '{self.method.name}' precomputes targets for every training prompt: fit with "
                               "a TaskDataModule (trainer.fit(module, datamodule=...)), which lists them")
        return PrepareContext(datamodule.train_prompts(), self.teacher, self.tokenizer, self.vocab_size,
                              self.global_rank, self.trainer.world_size, _gather_objects)

    def _training_sequences(self, epoch: int) -> Iterator[Batch]:
        """This rank's training batches of `epoch` as the method's source makes them, from a loader
        of their own (the run's loader and random draws are untouched); none without a
        TaskDataModule (a cached teacher then scores each sequence when first met)."""
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, TaskDataModule):
            return
        ctx = StepContext(self.student, self.teacher, self.tokenizer, self.vocab_size, torch.Generator(),
                          epoch=epoch)
        loader = datamodule.train_dataloader()
        loader.sampler.start_at(epoch)
        for gold in loader:
            yield self.method.source.sequences(gold.to(self.device), ctx)

    def on_validation_start(self) -> None:
        self._place_teacher()

    # --- exact resumption ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The random state of every rank (the source's generator: masks, draws; torch's global
        generators: sampling), so a resumed run draws exactly what an uninterrupted one would; and
        the loggers' files, so every row before the checkpoint is on disk with it."""
        state = {"source": self.source_rng.get_state(), "torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        checkpoint["kdlight_rng"] = _gather_objects(state)
        if self.adapters_only and isinstance(self.student, PeftModel):  # not once merged for evaluation
            trained = set(trainable_state_keys(self.student, "student."))
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        for logger in self._loggers():
            logger.save()

    def _loggers(self) -> list:
        trainer = self._trainer  # None when a spawn strategy's parent saves after fit, or outside fit
        return trainer.loggers if trainer is not None else []

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.adapters_only:
            trained, saved = set(trainable_state_keys(self.student, "student.")), set(checkpoint["state_dict"])
            if trained != saved:
                odd = min(trained ^ saved)
                raise KeyError(f"the checkpoint's adapters do not match this LoRA student ({len(trained - saved)} "
                               f"missing, {len(saved - trained)} unexpected, e.g. {odd}): it was written for another "
                               "model or LoRA setting")
        for logger in self._loggers():
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_from(checkpoint["global_step"])
        states = checkpoint.get("kdlight_rng")
        if not states:
            return
        state = states[self.global_rank] if self.global_rank < len(states) else states[0]
        self.source_rng.set_state(state["source"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def on_predict_start(self) -> None:
        self._place_teacher()

    # --- the loop --------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> None:
        ctx = StepContext(self.student, self.teacher, self.tokenizer, self.vocab_size, self.source_rng,
                          self.global_step, self.current_epoch, synced=self.trainer.world_size > 1)
        sequences = self.method.source.sequences(batch, ctx)
        set_training(self.student, True)
        counts = {"gold": self._global_count(batch.target_mask)}
        counts["sequences"] = counts["gold"] if sequences is batch else self._global_count(sequences.target_mask)
        micro = self.options.micro_batch_size or batch.size
        logged: dict[str, float] = {}
        for start in range(0, batch.size, micro):
            gold_part = batch.slice(start, start + micro)
            seq_part = gold_part if sequences is batch else sequences.slice(start, start + micro)
            part = micro_batch_loss(self.method, self.student, self.teacher, gold_part, seq_part, self.vocab_size,
                                    counts, fused=self._fused_head)
            self.manual_backward(part.loss * self.trainer.world_size)  # DDP averages gradients over ranks
            for name in part.terms:
                logged[name] = logged.get(name, 0.0) + part.share(name, counts)
        self._stop_if_not_finite(logged)
        self._optimizer_step()
        self._record_step(logged, ctx.timings)

    @property
    def _fused_head(self) -> bool:
        """The fused head reads the head's weight outside the head's own forward, which a sharded
        (FSDP) student's hooks would not see: full logits there."""
        return self.options.fused_head and not isinstance(self.trainer.strategy, FSDPStrategy)

    def _stop_if_not_finite(self, logged: dict[str, float]) -> None:
        """A loss that is NaN or infinite on any rank stops the run before the update is applied:
        training on would only spread it, and its model must not be saved or published."""
        bad = torch.tensor(float(not all(math.isfinite(v) for v in logged.values())), device=self.device)
        if float(self.trainer.strategy.reduce(bad, reduce_op="sum")) > 0:
            terms = ", ".join(f"{name} {value:.4g}" for name, value in logged.items())
            raise NonFiniteLossError(f"step {self.global_step + 1}: the loss is not finite ({terms}); nothing after "
                                     "it is usable. Lower the learning rate (optimizer.lr), clip gradients "
                                     "(loop.grad_clip), or check the data")

    def _global_count(self, mask: torch.Tensor) -> float:
        count = mask.sum().to(torch.float32)
        return float(self.trainer.strategy.reduce(count, reduce_op="sum").clamp(min=1.0))

    def _optimizer_step(self) -> None:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        if self.options.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.options.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    def _record_step(self, logged: dict[str, float], timings: dict[str, float]) -> None:
        """The step's metrics: into `step_metrics` (the progress bar shows them), and on logging
        steps to the loggers (`_write_step`). Each term's share on this rank is its sum here / the
        global count, so the step's value is the sum over ranks: the terms (the same names on every
        rank: the method's) go in one tensor, summed across ranks at once. The learning rate and a
        source's timings (e.g. on-policy generation seconds) are this rank's own, not reduced."""
        weights = {"ce": self.method.ce_weight}
        if self.method.divergence is not None:
            weights[f"kd_{self.method.divergence.name}"] = self.method.kd_weight
        names = sorted(logged)
        shares = torch.tensor([logged[name] for name in names], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            shares = self.trainer.strategy.reduce(shares, reduce_op="sum")
        metrics = {f"train/{name}": value for name, value in zip(names, shares.tolist())}
        metrics["train/loss"] = sum(weights[name] * metrics[f"train/{name}"] for name in names)
        metrics["train/lr"] = self.lr_schedulers().get_last_lr()[0]
        metrics |= {f"train/{name}": seconds for name, seconds in timings.items()}
        self.step_metrics = metrics
        trainer = self.trainer
        if trainer.fast_dev_run or getattr(trainer._logger_connector, "should_update_logs", True):
            self._write_step(metrics)

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        """A callback that stops the run in its `on_train_batch_end` (Lightning's `max_time`, early
        stopping on training metrics) makes this last step a logging step after the fact: its row
        is written now (after any checkpoint of the step, as Lightning would)."""
        if self.trainer.should_stop and self._written_step != self._row_step():
            self._write_step(self.step_metrics)

    def _row_step(self) -> int:
        """The step Lightning labels this step's rows with (validation rows too): optimiser steps
        before it, counted by the loop (`global_step - 1` but for one resume corner)."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped

    def _write_step(self, metrics: dict[str, float]) -> None:
        """The step's row, on the steps Lightning's loggers write (every `log_every_n_steps`), written
        to the loggers here rather than through `self.log`, for two reasons. Order: this runs before
        any callback's `on_train_batch_end`, where checkpoints are saved (and save the loggers), so
        a run killed after the checkpoint of this step keeps the row; through `self.log` the row
        came after, and a kill in between lost it. Cost: `self.log` walks every stored result on
        each call (~0.6 ms per key, a few percent of a small model's step); it is now called only
        on these steps, with `logger=False`, so that `callback_metrics` has the values too. The
        row is the one Lightning writes: step counted from 0, the epoch added."""
        step = self._written_step = self._row_step()
        for logger in self.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)
            logger.save()
        self.log_dict(metrics, logger=False, batch_size=1)  # per-step values: no batch-size weighting

    # --- evaluation ------------------------------------------------------------------------------
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Held-out CE per target token, and the student's KL from the teacher when the teacher
        can score any sequence (a live model; not a store of outputs)."""
        positions = target_positions(batch.target_mask)
        n = len(positions)
        student = take_positions(target_logits(self.student, batch, self.vocab_size), positions)
        ce = token_cross_entropy(student, batch.target_ids.flatten()[positions]).sum() / max(n, 1)
        self.log("val/ce", ce, batch_size=n, prog_bar=True)
        teacher = self.teacher.held_out() if self.teacher is not None else None  # a cache's live teacher
        if teacher is not None and teacher.scores_any_sequence:
            clean = teacher.distributions(batch, self.vocab_size, noisy=False)  # no teacher dropout here
            kl = forward_kl(student, take_positions(clean, positions)).sum() / max(n, 1)
            self.log("val/kl_from_teacher", kl, batch_size=n)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[tuple[int, list[int]]]:
        """Decoding with `self.decoding` (batched, KV cache); returns (example index, generated ids)
        for the first returned sequence of each example. Synced across ranks: a sharded student's
        forward is collective."""
        self.student.eval()
        return predictions(self.student, batch, self.decoding, self.tokenizer.eos_token_id,
                           self.tokenizer.pad_token_id, self.vocab_size, synced=self.trainer.world_size > 1)

    # --- optimiser -------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.student.parameters() if p.requires_grad])
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        warmup, floor = self.options.warmup_steps, self.options.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def _gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (just `[obj]` without a process group)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
