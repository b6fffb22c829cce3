"""Step time of kdlight against the floor, TRL's GKDTrainer and its own methods, in one process.

    .venv/bin/python experiments/speed/bench.py                                  # both pairs, default rounds
    .venv/bin/python experiments/speed/bench.py --pairs tiny --repeats 1 --steps 2 --threads 1   # a quick look

Every variant trains its own copy of the same student (same initial weights) on the same random
token ids (prompt 64 + target 64, batch 8, fp32), against the same frozen teacher. The variants run
in interleaved blocks (round r runs one block of every variant, the order rotated by r); round 0 is
warm-up and not counted. A block is one fresh `fit` (Lightning) or `train` (TRL) of `steps + 2`
optimisation steps: a step's time is the wall time from its start to the next step's start, so it
includes everything a user's loop pays per step (the batch fetch, the step, logging, the optimiser,
the loop's own bookkeeping); the first step of a block (lazy optimiser state) and the last (no next
start) are not counted. Reported: the median step time with min-max, and ratios of medians, with
the min-max of the same ratio over rounds.

Variants (kdlight's methods from conf/method/*.yaml through Hydra, as `kdlight-train` builds them):
  floor         one teacher forward (no grad) + student forward, CE, backward, AdamW step: a bare loop
  kd_gjsd       kdlight, method=gkd method.source.lam=0 (off-policy GKD: GJSD β 0.5 on gold, no CE)
  trl_default   TRL GKDTrainer λ 0, β 0.5, T 1, seq_kd off, its defaults (gradient checkpointing on,
                so the KV cache off)
  trl_nogc      the same with gradient checkpointing off (KV cache on)
  kid, rkd, sft kdlight, method=kid / rkd / sft (KID's CE and RKL from one student pass)
  kid_gold_ce   kdlight, method=kid method.ce_on=gold (CE on the clean gold: a second student pass)
  fkd           kdlight, method=fkd with the live teacher
  fkd_cache64   kdlight, method=fkd with the cached sparse teacher (teacher_cache.top_k=64, in memory)
  onpolicy      kdlight, method=gkd method.source.lam=1 (the student samples every target)
  trl_onpolicy  TRL GKDTrainer λ 1, gradient checkpointing off (its KV cache on while sampling)

Before timing, each pair checks that kdlight (kd_gjsd) and TRL compute the same loss on the same
first batch from the same weights (abort beyond 1e-4 relative), and compares the parameters after
one update (both AdamW with kdlight's settings, weight decay 0 because TRL exempts norms and biases
from it, full learning rate at step 1, gradient norm clipped at 1).

TRL is an optional dependency of this benchmark only: pip install 'trl>=1.0'.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the teacher cache's progress bar, once per block

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from kdlight.data.batch import Batch
from kdlight.data.tokenizer import SPECIAL_TOKENS
from kdlight.methods.on_policy import StudentSamples
from kdlight.models.build import build_model, count_parameters
from kdlight.processes import prepare_compute
from kdlight.training.module import DistillationModule
from kdlight.training.teacher import LiveTeacher
from kdlight.training.teacher_cache import (CachedSparseTeacher, TeacherCacheSpec, check_cacheable,
                                           with_missing_mass)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
BATCH, PROMPT, TARGET = 8, 64, 64
LOSS_TOLERANCE = 1e-4  # relative difference of kdlight's and TRL's loss on the first batch
CACHE_TOP_K = 64


@dataclass(frozen=True)
class Pair:
    """A teacher/student pair: Hydra overrides of conf/train.yaml, the vocabulary size, and the
    default rounds and steps per block (`--repeats`, `--steps`)."""

    vocab: int
    overrides: tuple[str, ...]
    repeats: int
    steps: int


PAIRS = {
    # conf/model/llama-m.yaml (~0.98M) teaching llama-s (~0.17M), vocabulary 1k.
    # Its steps take ~40 ms, so a block is short and the machine's moment-to-moment state moves a
    # block's median by up to ±15%: more and longer blocks than the larger pair's (~1 s steps).
    "tiny": Pair(1024, ("model@teacher=llama-m", "model@student=llama-s"), repeats=16, steps=8),
    # ~31.5M teacher, ~5.5M student (llama-l sizes), vocabulary 8k.
    "larger": Pair(8192, ("model@teacher=llama-l", "teacher.config.hidden_size=512",
                          "teacher.config.intermediate_size=1536", "teacher.config.num_hidden_layers=8",
                          "model@student=llama-l", "student.config.num_hidden_layers=4"), repeats=4, steps=4),
}

# name -> label; the kdlight variants' Hydra overrides are in METHOD_OVERRIDES.
VARIANTS = {
    "floor": "teacher forward (no grad) + student forward, CE, backward, AdamW step",
    "kd_gjsd": "kdlight off-policy KD: method=gkd, lam 0 (GJSD β 0.5 on gold)",
    "trl_default": "TRL GKDTrainer λ 0, defaults (gradient checkpointing on, KV cache off)",
    "trl_nogc": "TRL GKDTrainer λ 0, gradient checkpointing off",
    "kid": "kdlight method=kid",
    "kid_gold_ce": "kdlight method=kid method.ce_on=gold",
    "rkd": "kdlight method=rkd",
    "sft": "kdlight method=sft",
    "fkd": "kdlight method=fkd, live teacher",
    "fkd_cache64": f"kdlight method=fkd, cached top-{CACHE_TOP_K} teacher",
    "onpolicy": "kdlight on-policy: method=gkd, lam 1",
    "trl_onpolicy": "TRL GKDTrainer λ 1, gradient checkpointing off (KV cache on)",
}
METHOD_OVERRIDES = {
    "kd_gjsd": ["method=gkd", "method.source.lam=0.0"],
    "kid": ["method=kid"],
    "kid_gold_ce": ["method=kid", "method.ce_on=gold"],
    "rkd": ["method=rkd"],
    "sft": ["method=sft"],
    "fkd": ["method=fkd"],
    "fkd_cache64": ["method=fkd"],
    "onpolicy": ["method=gkd", "method.source.lam=1.0"],
}

# (key, label, numerator, denominator, goal); "tokens_per_s" compares generation throughput instead.
RATIOS = [
    ("kd_floor", "kdlight off-policy KD step / floor", "kd_gjsd", "floor", "≤ 1.10"),
    ("kd_trl", "kdlight / TRL GKDTrainer, λ 0, TRL defaults (checkpointing on, KV cache off)", "kd_gjsd",
     "trl_default", "≤ 0.65"),
    ("kd_trl_nogc", "kdlight / TRL GKDTrainer, λ 0, checkpointing off", "kd_gjsd", "trl_nogc", "–"),
    ("kid_rkd", "KID step / RKD-on-gold step", "kid", "rkd", "≤ 1.15"),
    ("kid_gold_ce_rkd", "KID step, CE on the clean gold (a second student pass) / RKD step", "kid_gold_ce",
     "rkd", "–"),
    ("rkd_sft", "RKD step / SFT step", "rkd", "sft", "–"),
    ("kid_sft", "KID step / SFT step", "kid", "sft", "–"),
    ("onpolicy_trl", "on-policy (λ 1) step, kdlight / TRL with its KV cache on", "onpolicy", "trl_onpolicy",
     "≤ 0.7"),
    ("tokens_per_s", "on-policy generated tokens/s, kdlight / TRL (HF generate)", "onpolicy", "trl_onpolicy",
     "≥ 1.5"),
    ("cache_sft", f"KD step with a cached top-{CACHE_TOP_K} teacher / SFT step", "fkd_cache64", "sft", "≤ 1.3"),
    ("fkd_sft", "KD step with the live teacher / SFT step", "fkd", "sft", "–"),
]


# --- shared inputs ------------------------------------------------------------------------------------
def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A tokenizer of exactly `vocab` tokens with kdlight's special tokens (ids 0-4): the benchmark
    feeds token ids, so only its size and special ids matter."""
    specials = list(SPECIAL_TOKENS.values())
    words = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(len(specials), vocab)])}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def random_batches(count: int, vocab: int, seed: int) -> list[Batch]:
    """`count` batches of random non-special token ids, every prompt and target full length."""
    generator = torch.Generator().manual_seed(seed)
    low = len(SPECIAL_TOKENS)
    batches = []
    for i in range(count):
        prompt = torch.randint(low, vocab, (BATCH, PROMPT), generator=generator)
        target = torch.randint(low, vocab, (BATCH, TARGET), generator=generator)
        batches.append(Batch(prompt, torch.ones_like(prompt), target, torch.ones_like(target),
                             torch.arange(i * BATCH, (i + 1) * BATCH), torch.ones(BATCH, dtype=torch.bool)))
    return batches


def trl_rows(batches: list[Batch]) -> list[dict]:
    """The same sequences as TRL's GKD collator lays them out: prompt ⊕ target, labels -100 on the prompt."""
    rows = []
    for batch in batches:
        for prompt, target in zip(batch.prompt_ids.tolist(), batch.target_ids.tolist()):
            rows.append({"input_ids": prompt + target, "attention_mask": [1] * (len(prompt) + len(target)),
                         "labels": [-100] * len(prompt) + target, "prompts": prompt,
                         "prompt_attention_mask": [1] * len(prompt)})
    return rows


def collate_rows(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


@dataclass
class PairSetup:
    """What every variant of one pair shares: configs, tokenizer, models, data."""

    name: str
    vocab: int
    overrides: tuple[str, ...]
    tokenizer: PreTrainedTokenizerFast
    teacher: torch.nn.Module
    student: torch.nn.Module  # initial weights; every variant trains a copy
    batches: list[Batch]
    optimizer: dict  # kdlight's optimiser settings (conf/train.yaml), for TRL and the floor too
    trainer: dict  # conf/trainer/cpu.yaml's Lightning Trainer arguments
    seed: int

    def config(self, extra: list[str]):
        return compose(config_name="train", overrides=[*self.overrides, *extra])


def setup_pair(name: str, steps: int, seed: int) -> PairSetup:
    pair = PAIRS[name]
    overrides = (*pair.overrides, f"tokenizer.vocab_size={pair.vocab}", f"data.decoding.max_new_tokens={TARGET}",
                 f"seed={seed}")
    cfg = compose(config_name="train", overrides=list(overrides))
    tokenizer = word_tokenizer(pair.vocab)
    torch.manual_seed(seed)
    teacher = build_model(instantiate(cfg.teacher), tokenizer, frozen=True)
    torch.manual_seed(seed + 1)
    student = build_model(instantiate(cfg.student), tokenizer)
    for model in (teacher, student):
        if model.get_output_embeddings().weight.shape[0] != pair.vocab:
            raise RuntimeError(f"{name}: a model's vocabulary is padded past {pair.vocab}; TRL needs equal sizes")
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if optimizer["_target_"] != "torch.optim.AdamW":
        raise ValueError(f"the TRL comparison assumes kdlight's optimiser is AdamW, got {optimizer['_target_']}")
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    return PairSetup(name, pair.vocab, overrides, tokenizer, teacher, student,
                     random_batches(steps + 2, pair.vocab, seed), optimizer, trainer, seed)


# --- step timing ----------------------------------------------------------------------------------------
def step_times(starts: list[float]) -> list[float]:
    """Seconds of each step from its start to the next one's, without a block's first step."""
    return [b - a for a, b in itertools.pairwise(starts)][1:]


class StepStarts(L.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())


def lightning_trainer(setup: PairSetup, steps: int, callbacks: list) -> L.Trainer:
    """conf/trainer/cpu.yaml's Trainer (what `kdlight-train` uses), for `steps` steps, without
    validation, checkpoints, logger files or progress bar."""
    kwargs = {k: v for k, v in setup.trainer.items() if k != "val_check_interval"}
    kwargs |= {"max_steps": steps, "max_epochs": -1, "limit_val_batches": 0, "logger": False,
               "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
               "callbacks": callbacks}
    return L.Trainer(**kwargs)


@dataclass
class CountedSamples(StudentSamples):
    """kdlight's on-policy source, also recording each draw's generated tokens and seconds."""

    generations: list[tuple[int, float]] = field(default_factory=list)

    def sample(self, prompts: Batch, ctx) -> list[list[int]]:
        started = time.perf_counter()
        samples = super().sample(prompts, ctx)
        self.generations.append((sum(map(len, samples)), time.perf_counter() - started))
        return samples


class KdlightVariant:
    """kdlight's training step: `DistillationModule` under a Lightning Trainer, as `kdlight-train` runs it."""

    def __init__(self, setup: PairSetup, name: str, check: bool = False):
        cfg = setup.config(METHOD_OVERRIDES[name])
        method = instantiate(cfg.method, _convert_="object")
        loop = instantiate(cfg.loop)
        optimizer = instantiate(cfg.optimizer)
        if check:  # one update comparable with TRL's: full learning rate at step 1, no weight decay
            loop, optimizer = replace(loop, warmup_steps=0), partial(optimizer, weight_decay=0.0)
        if isinstance(method.source, StudentSamples) and method.source.lam > 0:
            source = method.source
            method = replace(method, source=CountedSamples(**{f.name: getattr(source, f.name) for f in fields(source)}))
        teacher = LiveTeacher(setup.teacher) if method.needs_teacher else None
        if name == "fkd_cache64":  # as kdlight.run.train builds it for teacher_cache.top_k
            spec = TeacherCacheSpec(CACHE_TOP_K, cfg.teacher_cache.missing_mass)  # in memory (cache_dir None)
            check_cacheable(method, loop.teacher_placement)
            method = with_missing_mass(method, spec.missing_mass)
            teacher = CachedSparseTeacher(teacher, spec.top_k, setup.vocab, spec.cache_dir)
        self.setup, self.method = setup, method
        self.module = DistillationModule(copy.deepcopy(setup.student), method, setup.tokenizer, setup.vocab,
                                         optimizer, loop, teacher, seed=setup.seed)

    @property
    def student(self) -> torch.nn.Module:
        return self.module.student

    def block(self, batches: list[Batch]) -> dict:
        timer = StepStarts()
        trainer = lightning_trainer(self.setup, len(batches), [timer])
        trainer.fit(self.module, train_dataloaders=DataLoader(batches, batch_size=None))
        out = {"times": step_times(timer.starts), "loss": self.module.step_metrics["train/loss"]}
        if isinstance(self.method.source, CountedSamples):
            draws = self.method.source.generations[-len(batches):]
            out["generations"] = draws[1:-1]  # the timed steps'
        return out


class FloorVariant:
    """The least any distillation step costs: a hand-written loop with no loss beyond CE."""

    def __init__(self, setup: PairSetup):
        self.teacher, self.student = setup.teacher, copy.deepcopy(setup.student)
        settings = {k: v for k, v in setup.optimizer.items() if not k.startswith("_")}
        self.optimizer = torch.optim.AdamW(self.student.parameters(), **settings)

    def block(self, batches: list[Batch]) -> dict:
        self.student.train()
        starts = []
        for batch in batches:
            starts.append(time.perf_counter())
            input_ids = torch.cat([batch.prompt_ids, batch.target_ids], dim=1)
            mask = torch.cat([batch.prompt_mask, batch.target_mask], dim=1)
            keep = batch.target_ids.shape[1] + 1  # the positions that predict target tokens (and one past)
            with torch.no_grad():
                self.teacher(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep, use_cache=False)
            logits = self.student(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep,
                                  use_cache=False).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target_ids.flatten())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        starts.append(time.perf_counter())
        return {"times": step_times(starts)[:-1]}  # the last step is left out, as in the trainers' blocks


def trl_classes():
    try:
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as error:
        raise SystemExit(f"TRL is needed for the TRL variants ({error}): pip install 'trl>=1.0', or leave them out "
                         "with --variants") from None

    class HFStepStarts(TrainerCallback):
        def __init__(self):
            self.starts: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.starts.append(time.perf_counter())

    class RecordingGKDTrainer(GKDTrainer):
        """GKDTrainer recording each step's loss and each on-policy draw's generated tokens and seconds."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.losses: list[float] = []
            self.generations: list[tuple[int, float]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.losses.append(float(loss))
            return loss

        def generate_on_policy_outputs(self, model, inputs, generation_config):
            started = time.perf_counter()
            ids, mask, labels = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            tokens = int(mask[:, inputs["prompts"].shape[1]:].sum())
            self.generations.append((tokens, time.perf_counter() - started))
            return ids, mask, labels

    return GKDConfig, RecordingGKDTrainer, HFStepStarts, (PrinterCallback, ProgressCallback)


class TrlVariant:
    """TRL's GKDTrainer, a fresh trainer per block (as a fresh Lightning Trainer is for kdlight).

    fp32 (TRL would default to bf16 autocast on this CPU), and kdlight's optimiser settings, so only
    the implementations differ; TRL keeps its own optimiser choice (fused AdamW) and scheduler."""

    def __init__(self, setup: PairSetup, lmbda: float, gradient_checkpointing: bool, weight_decay: float | None = None):
        self.config, self.trainer_class, self.timer_class, self.quiet = trl_classes()
        self.setup, self.lmbda, self.gradient_checkpointing = setup, lmbda, gradient_checkpointing
        self.student, self.teacher = copy.deepcopy(setup.student), copy.deepcopy(setup.teacher)
        self.weight_decay = setup.optimizer.get("weight_decay", 0.0) if weight_decay is None else weight_decay
        self.folder = tempfile.mkdtemp(prefix="kdlight-speed-trl-")

    def trainer(self, batches: list[Batch], callbacks: list):
        from datasets import Dataset

        optimizer = self.setup.optimizer
        beta1, beta2 = optimizer.get("betas", (0.9, 0.999))
        args = self.config(output_dir=self.folder, max_steps=len(batches), per_device_train_batch_size=BATCH,
                           lmbda=self.lmbda, beta=0.5, temperature=1.0, seq_kd=False, max_new_tokens=TARGET,
                           gradient_checkpointing=self.gradient_checkpointing, bf16=False, use_cpu=True,
                           learning_rate=optimizer["lr"], weight_decay=self.weight_decay, adam_beta1=beta1,
                           adam_beta2=beta2, adam_epsilon=optimizer.get("eps", 1e-8), max_grad_norm=1.0,
                           report_to="none", save_strategy="no", disable_tqdm=True, seed=self.setup.seed,
                           dataloader_num_workers=0)
        trainer = self.trainer_class(model=self.student, teacher_model=self.teacher, args=args,
                                     train_dataset=Dataset.from_list(trl_rows(batches)),
                                     processing_class=self.setup.tokenizer, data_collator=collate_rows,
                                     callbacks=callbacks)
        for quiet in self.quiet:
            trainer.remove_callback(quiet)
        return trainer

    def block(self, batches: list[Batch]) -> dict:
        timer = self.timer_class()
        trainer = self.trainer(batches, [timer])
        trainer.train()
        out = {"times": step_times(timer.starts), "loss": trainer.losses[-1]}
        if self.lmbda > 0:
            out["generations"] = trainer.generations[1:-1]
        return out

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def make_variant(setup: PairSetup, name: str):
    if name == "floor":
        return FloorVariant(setup)
    if name == "trl_default":
        return TrlVariant(setup, lmbda=0.0, gradient_checkpointing=True)
    if name == "trl_nogc":
        return TrlVariant(setup, lmbda=0.0, gradient_checkpointing=False)
    if name == "trl_onpolicy":
        return TrlVariant(setup, lmbda=1.0, gradient_checkpointing=False)
    return KdlightVariant(setup, name)


# --- the loss and update check -------------------------------------------------------------------------
def parameter_difference(a: torch.nn.Module, b: torch.nn.Module, start: torch.nn.Module) -> dict:
    """How far two students are apart after their update, against the size of the update itself."""
    b_params, start_params = dict(b.named_parameters()), dict(start.named_parameters())
    gaps, updates = [], []
    for name, p in a.named_parameters():
        gaps.append((p.detach() - b_params[name].detach()).abs().flatten())
        updates.append((p.detach() - start_params[name].detach()).abs().flatten())
    gap, update = torch.cat(gaps), torch.cat(updates)
    largest = float(update.max())
    return {"max_abs_difference": float(gap.max()), "max_abs_update": largest, "elements": gap.numel(),
            "elements_off_by_over_1pct_of_max_update": int((gap > 0.01 * largest).sum())}


def check_against_trl(setup: PairSetup) -> dict:
    """kdlight's kd_gjsd and TRL's GKDTrainer (λ 0), one step each from the same weights on the same
    first batch: the losses must agree within LOSS_TOLERANCE (else the run stops); the updated
    parameters are compared and reported."""
    first = setup.batches[:1]
    kdlight = KdlightVariant(setup, "kd_gjsd", check=True)
    kdlight_loss = kdlight.block(first)["loss"]
    report = {"kdlight_loss": kdlight_loss, "tolerance": LOSS_TOLERANCE}
    for label, checkpointing in (("trl_default", True), ("trl_nogc", False)):
        trl = TrlVariant(setup, lmbda=0.0, gradient_checkpointing=checkpointing, weight_decay=0.0)
        trainer = trl.trainer(first, [])
        trainer.train()
        trl.close()
        trl_loss = trainer.losses[0]
        relative = abs(kdlight_loss - trl_loss) / abs(trl_loss)
        report[label] = {"trl_loss": trl_loss, "relative_difference": relative,
                         "parameters": parameter_difference(kdlight.student, trl.student, setup.student)}
        print(f"[{setup.name}] check vs {label}: loss kdlight {kdlight_loss:.8f}, TRL {trl_loss:.8f} "
              f"(relative difference {relative:.2e}); parameters after one update: max |difference| "
              f"{report[label]['parameters']['max_abs_difference']:.3g} "
              f"(max |update| {report[label]['parameters']['max_abs_update']:.3g})", flush=True)
        if not relative <= LOSS_TOLERANCE:
            raise SystemExit(f"[{setup.name}] kdlight and TRL ({label}) compute different losses on the same first "
                             f"batch: {kdlight_loss!r} vs {trl_loss!r} (relative {relative:.2e} > {LOSS_TOLERANCE}); "
                             "the timings would compare different work, so none are taken")
    return report


# --- summary -----------------------------------------------------------------------------------------------
def summarise(times: list[list[float]]) -> dict:
    flat = [t for block in times for t in block]
    return {"median_s": statistics.median(flat), "min_s": min(flat), "max_s": max(flat), "steps": len(flat)}


def tokens_per_s(generations: list[list[tuple[int, float]]]) -> float:
    draws = [g for block in generations for g in block]
    return sum(t for t, _ in draws) / sum(s for _, s in draws)


def ratio(results: dict, key: str, numerator: str, denominator: str) -> dict | None:
    """The ratio of the overall medians, and its min-max over rounds (each round's block medians)."""
    if numerator not in results or denominator not in results:
        return None
    a, b = results[numerator], results[denominator]
    if key == "tokens_per_s":
        per_round = [tokens_per_s([x]) / tokens_per_s([y]) for x, y in zip(a["generations"], b["generations"])]
        value = tokens_per_s(a["generations"]) / tokens_per_s(b["generations"])
    else:
        per_round = [statistics.median(x) / statistics.median(y) for x, y in zip(a["times"], b["times"])]
        value = a["median_s"] / b["median_s"]
    return {"value": value, "round_min": min(per_round), "round_max": max(per_round)}


def run_pair(name: str, variants: list[str], steps: int, repeats: int, seed: int, threads: int) -> dict:
    setup = setup_pair(name, steps, seed)
    print(f"[{name}] teacher {count_parameters(setup.teacher):,} parameters, student "
          f"{count_parameters(setup.student):,}, vocabulary {setup.vocab}", flush=True)
    uses_trl = any(v.startswith("trl") for v in variants)
    check = check_against_trl(setup) if uses_trl else None
    runners = {v: make_variant(setup, v) for v in variants}
    blocks: dict[str, list[dict]] = {v: [] for v in variants}
    for round_index in range(repeats + 1):  # round 0: warm-up
        shift = round_index % len(variants)
        for v in variants[shift:] + variants[:shift]:
            torch.set_num_threads(threads)  # as set at start, whatever a library did since
            out = runners[v].block(setup.batches)
            blocks[v].append(out)
            tag = "warm-up" if round_index == 0 else f"round {round_index}/{repeats}"
            print(f"[{name}] {tag} {v}: median step {statistics.median(out['times']) * 1e3:.1f} ms", flush=True)
    for runner in runners.values():
        if isinstance(runner, TrlVariant):
            runner.close()
    results = {}
    for v in variants:
        timed = blocks[v][1:]
        results[v] = {"label": VARIANTS[v], "times": [b["times"] for b in timed],
                      "warmup_times": blocks[v][0]["times"], **summarise([b["times"] for b in timed])}
        if "generations" in timed[0]:
            results[v]["generations"] = [b["generations"] for b in timed]
            results[v]["tokens_per_s"] = tokens_per_s(results[v]["generations"])
            results[v]["tokens_per_step"] = statistics.mean(t for b in timed for t, _ in b["generations"])
    ratios = {key: r for key, _, a, b, _ in RATIOS if (r := ratio(results, key, a, b)) is not None}
    return {"teacher_params": count_parameters(setup.teacher), "student_params": count_parameters(setup.student),
            "vocab": setup.vocab, "check": check, "variants": results, "ratios": ratios}


def environment(threads: int) -> dict:
    def version(package: str) -> str | None:
        try:
            return __import__(package).__version__
        except ImportError:
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": version("transformers"),
            "trl": version("trl"), "lightning": L.__version__, "threads": threads, "cpu": cpu,
            "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "kdlight_commit": commit,
            "kdlight_uncommitted_changes": dirty,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def markdown(report: dict) -> str:
    pairs = list(report["pairs"])
    env = report["environment"]
    summary = (f"Measured {report['date']}: {env['cpu']}, {env['threads']} torch threads, torch {env['torch']}, "
               f"transformers {env['transformers']}, trl {env['trl']}, lightning {env['lightning']}; "
               + ", ".join(f"{p}: {report['settings']['repeats'][p]} rounds x {report['settings']['steps'][p]} timed steps"
                           for p in pairs) + " per variant; "
               f"load average {env['load_average_start'][0]:.2f} at start, {env['load_average_end'][0]:.2f} at end.")
    lines = [summary, "", "| ratio | " + " | ".join(f"{p} pair" for p in pairs) + " | goal |",
             "|---|" + "---|" * len(pairs) + "---|"]
    for key, label, *_, goal in RATIOS:
        cells = []
        for p in pairs:
            r = report["pairs"][p]["ratios"].get(key)
            cells.append(f"{r['value']:.2f} ({r['round_min']:.2f}–{r['round_max']:.2f})" if r else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    lines += ["", "Ratios of median step times (in brackets: the same ratio per round, min–max).", "",
              "| variant | " + " | ".join(f"{p}: median ms (min–max)" for p in pairs) + " |",
              "|---|" + "---:|" * len(pairs)]
    for v, label in VARIANTS.items():
        cells = []
        for p in pairs:
            r = report["pairs"][p]["variants"].get(v)
            cells.append(f"{r['median_s'] * 1e3:.1f} ({r['min_s'] * 1e3:.1f}–{r['max_s'] * 1e3:.1f})" if r else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {v}: {label} | " + " | ".join(cells) + " |")
    header = ("| pair | teacher params | student params | vocab | kdlight / TRL loss, relative difference "
              "(defaults; checkpointing off) | max parameter difference after one update (max update) |")
    lines += ["", header, "|---|---:|---:|---:|---|---|"]
    for p in pairs:
        pr = report["pairs"][p]
        check = pr["check"]
        if check:
            rel = "; ".join(f"{check[k]['relative_difference']:.1e}" for k in ("trl_default", "trl_nogc"))
            par = "; ".join(f"{check[k]['parameters']['max_abs_difference']:.2g} "
                            f"({check[k]['parameters']['max_abs_update']:.2g})" for k in ("trl_default", "trl_nogc"))
        else:
            rel = par = "not run"
        lines.append(f"| {p} | {pr['teacher_params']:,} | {pr['student_params']:,} | {pr['vocab']} | {rel} | {par} |")
    generation = [(p, v) for p in pairs for v in ("onpolicy", "trl_onpolicy") if v in report["pairs"][p]["variants"]]
    if generation:
        lines += ["", "| pair | variant | generated tokens/s | tokens per step |", "|---|---|---:|---:|"]
        for p, v in generation:
            r = report["pairs"][p]["variants"][v]
            lines.append(f"| {p} | {v} | {r['tokens_per_s']:,.0f} | {r['tokens_per_step']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="tiny,larger", help=f"comma-separated, of {', '.join(PAIRS)}")
    parser.add_argument("--repeats", type=int, help="timed rounds per variant, after one warm-up round "
                        f"(default per pair: {', '.join(f'{k} {p.repeats}' for k, p in PAIRS.items())})")
    parser.add_argument("--steps", type=int, help="timed steps per block, each block runs 2 more "
                        f"(default per pair: {', '.join(f'{k} {p.steps}' for k, p in PAIRS.items())})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "speed" / "results"),
                        help="folder for results.json and results.md")
    args = parser.parse_args()
    pairs, variants = args.pairs.split(","), args.variants.split(",")
    unknown = [p for p in pairs if p not in PAIRS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown pairs or variants {unknown}: pairs are {', '.join(PAIRS)}; variants {', '.join(VARIANTS)}")
    if any(n is not None and n < 1 for n in (args.repeats, args.steps)):
        parser.error(f"--repeats and --steps must be at least 1, got {args.repeats} and {args.steps}")
    prepare_compute(args.threads)  # as kdlight's commands set up their process; every variant runs in it
    # conf/trainer/cpu.yaml turns deterministic algorithms on for kdlight's Trainer, process-wide:
    # on from the start, every variant (floor and TRL included) runs under the same setting.
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers", "trl", "accelerate",
                  "kdlight", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "environment": environment(args.threads),
              "settings": {"batch": BATCH, "prompt": PROMPT, "target": TARGET, "dtype": "float32",
                           "repeats": {p: PAIRS[p].repeats if args.repeats is None else args.repeats for p in pairs},
                           "steps": {p: PAIRS[p].steps if args.steps is None else args.steps for p in pairs},
                           "seed": args.seed,
                           "cache_top_k": CACHE_TOP_K, "variants": variants},
              "pairs": {}}
    started = time.perf_counter()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for pair in pairs:
            report["pairs"][pair] = run_pair(pair, variants, report["settings"]["steps"][pair],
                                             report["settings"]["repeats"][pair], args.seed, args.threads)
    report["environment"]["load_average_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (out / "results.md").write_text(table)
    print("\n" + table + f"\n{report['wall_s']:.0f} s; written to {out}/results.json and results.md")


if __name__ == "__main__":
    sys.exit(main())
