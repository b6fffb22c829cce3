"""`profile(run, out)`: the practical cost of models side by side, a teacher and its student, which
is what a student is for (KD4Gen, Calderon et al., ACL 2023, weighs students by such costs).

Inputs are the data's own evaluation prompts with their targets, tokenised with the run's
tokenizer (so sequence lengths are realistic), decoded with the data's evaluation decoding
(`data.decoding`). One row per model:
  params            parameters (`count_parameters`)
  flops             FLOPs of one teacher-forced forward of prompt + target, per example (torch's
                    FlopCounterMode on a batch of `batch_size`, divided by it; a batch's padding
                    included, as the batch pays for it)
  forward_ms        wall time of that forward, per batch (a distillation step's forward)
  generate_ms       wall time to decode one prompt alone (batch 1): what a request waits;
                    `tokens`: how many tokens it decoded, on average (a random-init model often
                    never stops before max_new_tokens; a trained one does)
  batch, peak_mb    the largest power of two up to `max_batch_size` whose decoding fits
                    `memory_cap_gb` in the worst case (the longest prompts, every sequence decoded
                    to max_new_tokens), and its peak memory
  examples_per_min  decoded examples per minute at that batch
Times are medians over `repeats` after `warmup` runs, every measurement interleaving the models
(teacher, student, teacher, student, ...) so that a noisy shared machine slows both alike. The
`*_x` columns divide each value by the reference model's (the teacher by default).

Memory is what a model needs at its peak while decoding: its weights and buffers, the inputs and
every tensor alive at once (activations, KV cache, logits). On CUDA: the allocator's count
(`torch.cuda.max_memory_allocated` beyond what was allocated before the call, plus the model's
own weights). On CPU: `LiveTensorBytes`, the bytes of every tensor storage that PyTorch operators
return, from creation until freed. Unlike a process's RSS (blurred by the allocator's reuse of freed
memory, the other model and other processes) that count is deterministic, so a batch search gives
the same answer on every run; it misses only scratch memory that a fused kernel (attention)
allocates and frees inside one operator, which CUDA's count includes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.batch import Batch, collate
from kdlight.data.module import DataSpec, Encoded, TaskDataModule
from kdlight.data.tokenizer import TokenizerSpec, has_tokenizer, resolve_tokenizer, saved_tokenizer
from kdlight.io import write_atomic, write_json
from kdlight.models.build import ModelSpec, build_model, count_parameters
from kdlight.models.decoding import generate
from kdlight.models.lm import target_logits
from kdlight.models.vocab import ModelVocab, shared_vocab_size
from kdlight.processes import prepare_compute

log = logging.getLogger(__name__)

GB = 10**9  # memory_cap_gb counts GB of 10^9 bytes, as its name says
COLUMNS = ["role", "model", "dtype", "params", "flops", "forward_ms", "generate_ms", "tokens", "batch", "peak_mb",
           "examples_per_min", "params_x", "flops_x", "forward_x", "generate_x", "examples_per_min_x"]
RATIOS = ("params", "flops", "forward_ms", "generate_ms", "examples_per_min")


@dataclass(frozen=True)
class ProfileRun:
    """What to profile, on what, and how.

    Attributes:
        data: the task whose evaluation prompts (and targets) are the inputs, and its decoding.
        models: the models by role (`teacher`, `student`), in the order the table lists them.
        tokenizer: where the tokenizer comes from (as in training: a model's own, else trained).
        device: `auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:<i>`.
        prompts: how many evaluation examples are used (the first ones).
        batch_size: examples per teacher-forced forward (its latency and FLOPs).
        max_batch_size: the throughput batch search tries 1, 2, 4, ... up to this.
        memory_cap_gb: what a model may use at its peak while decoding, in GB (10^9 bytes).
        repeats: timed repeats of every measurement (medians reported).
        warmup: untimed runs of every measurement first.
        flops: count FLOPs (one extra forward per model).
        reference: the role that ratio columns divide by.
        seed: random initialisation of untrained models.
        threads: torch CPU threads (None: torch's default).
        data_name: the data's name in the report.
    """

    data: DataSpec
    models: Mapping[str, ModelSpec]
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    device: str = "auto"
    prompts: int = 64
    batch_size: int = 8
    max_batch_size: int = 64
    memory_cap_gb: float = 8.0
    repeats: int = 5
    warmup: int = 1
    flops: bool = True
    reference: str = "teacher"
    seed: int = 0
    threads: int | None = None
    data_name: str = "data"

    def __post_init__(self) -> None:
        for key in ("prompts", "batch_size", "max_batch_size", "repeats"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be a whole number >= 1, got {getattr(self, key)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not isinstance(self.memory_cap_gb, (int, float)) or not 0 < self.memory_cap_gb < math.inf:
            raise ValueError(f"memory_cap_gb must be a number of GB > 0, got {self.memory_cap_gb!r}")
        if self.reference not in self.models:
            raise ValueError(f"reference must be one of the profiled roles {list(self.models)}, got '{self.reference}'")
        for role, spec in self.models.items():
            if not isinstance(spec, ModelSpec):
                raise TypeError(f"{role}: {type(spec).__name__} '{getattr(spec, 'name', '?')}' has no model to profile "
                                "(a stored teacher is a file of outputs); choose a model config")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """The device `name` means; an unknown or absent device names the `device` setting."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got '{name}'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got '{name}'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}, but torch sees no CUDA device here (use device=auto or device=cpu)")
    return device


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages: the given ones (weights, inputs), and every
    storage an operator returns while the mode is on, until Python frees it. `peak` is the most
    alive at once: what `torch.cuda.max_memory_allocated` measures, on any device."""

    def __init__(self, tensors: Iterable[torch.Tensor]):
        super().__init__()
        self._alive: dict[int, weakref.ref] = {}
        self.current = self.peak = 0
        for tensor in tensors:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()  # views share it: counted once
        key, size = id(storage), storage.nbytes()
        if key in self._alive or size == 0:
            return
        self._alive[key] = weakref.ref(storage, lambda _, key=key, size=size: self._free(key, size))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, size: int) -> None:
        self._alive.pop(key, None)
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


@dataclass
class _Profiled:
    """One model under measurement, and its measurements so far."""

    role: str
    spec: ModelSpec
    model: PreTrainedModel
    times: dict[str, list[float]] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    memory: dict[int, int] = field(default_factory=dict)  # batch size -> peak bytes (the search)
    batch: int = 0
    flops: int | None = None


@torch.no_grad()
def profile(run: ProfileRun, out: str | Path) -> list[dict]:
    """Measure every model of `run`; write profile.md, profile.csv and profile.json to `out`.
    Returns one row per model (keys: `COLUMNS`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(run.device)
    prepare_compute(run.threads)
    items, tokenizer = _inputs(run, out)
    models = _build(run, tokenizer, device)
    vocab = shared_vocab_size(tokenizer, [ModelVocab(p.role, p.model, saved_tokenizer(p.spec.weights)) for p in models])
    decoding = run.data.decoding
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def decode(p: _Profiled, batch: Batch, worst_case: bool = False) -> list[list[int]]:
        # No EOS for the memory search: every sequence runs to max_new_tokens (the worst case).
        return generate(p.model, batch.to(device), decoding, None if worst_case else eos, pad, vocab)

    cap = run.memory_cap_gb * GB
    by_length = sorted(items, key=lambda item: -len(item[0]))  # the longest prompts: the worst batches
    for p in models:
        _search_batch(p, lambda b, p=p: decode(p, _batch(by_length, 0, b, pad), worst_case=True),
                      _tensors(p.model), cap, run.max_batch_size, device)
    forward = _batch(items, 0, run.batch_size, pad).to(device)
    if run.flops:
        for p in models:
            with FlopCounterMode(display=False) as counter:
                target_logits(p.model, forward, vocab)
            p.flops = round(counter.get_total_flops() / forward.size)

    measures: dict[str, Callable[[_Profiled, int], object]] = {
        "forward": lambda p, r: target_logits(p.model, forward, vocab),
        "generate": lambda p, r: decode(p, _batch(items, r, 1, pad)),  # prompt r alone
        "throughput": lambda p, r: decode(p, _batch(items, r * p.batch, p.batch, pad)),
    }
    log.info(f"timing {', '.join(measures)}: {run.warmup} warm-up and {run.repeats} timed runs each, models "
             "interleaved")
    for repeat in range(-run.warmup, run.repeats):  # negative: warm-up, not kept
        for kind, measure in measures.items():
            for p in models:
                seconds, result = _timed(partial(measure, p, max(repeat, 0)), device)
                if repeat >= 0:
                    p.times.setdefault(kind, []).append(seconds)
                    if kind == "generate":
                        p.tokens.append(len(result[0]))
    rows = _rows(models, run.reference)
    _write(out, run, rows, models, device)
    return rows


def _inputs(run: ProfileRun, out: Path) -> tuple[list[Encoded], PreTrainedTokenizerBase]:
    """The first `prompts` evaluation examples, tokenised with the run's tokenizer (resolved as a
    training run resolves it: the student's own, the teacher's, else one trained on the text)."""
    paths = [run.models[role].weights for role in sorted(run.models, key=lambda role: role != "student")]
    needs_text = run.tokenizer.path is None and not any(has_tokenizer(path) for path in paths)
    datamodule = TaskDataModule(replace(run.data, limit_eval=run.prompts), run.data_name, seed=run.seed,
                                use_train=needs_text)
    datamodule.load()
    tokenizer = resolve_tokenizer(run.tokenizer, paths, datamodule.training_texts(), out / "tokenizer")
    datamodule.connect(tokenizer)
    datamodule.setup()
    items = datamodule.eval_sets[0].encoded
    lengths = [len(prompt) + len(target or []) for prompt, target, _ in items]
    log.info(f"{len(items)} prompts of data '{run.data_name}' ({run.data.task.describe()}): prompt + target "
             f"{min(lengths)}-{max(lengths)} tokens, median {statistics.median(lengths):.0f}")
    return items, tokenizer


def _build(run: ProfileRun, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> list[_Profiled]:
    models = []
    for role, spec in run.models.items():
        torch.manual_seed(run.seed)  # untrained models: the same weights in every profile
        model = build_model(spec, tokenizer, frozen=True).to(device).eval()
        model.requires_grad_(False)
        log.info(f"{role} {spec.name}: {count_parameters(model):,} parameters, {next(model.parameters()).dtype}")
        models.append(_Profiled(role, spec, model))
    return models


def _batch(items: list[Encoded], start: int, size: int, pad_id: int) -> Batch:
    """`size` examples from position `start` on, wrapping around (a batch may hold an example twice)."""
    chosen = [items[(start + i) % len(items)] for i in range(size)]
    prompts, targets, _ = zip(*chosen)
    return collate(list(prompts), list(targets), list(range(size)), pad_id)


def _tensors(model: PreTrainedModel) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _search_batch(p: _Profiled, call: Callable[[int], object], tensors: list[torch.Tensor], cap: float,
                  max_batch: int, device: torch.device) -> None:
    """The largest power-of-two batch whose decoding fits `cap` (stops at the first that does not)."""
    size = 1
    while size <= max_batch:
        p.memory[size] = _peak_bytes(partial(call, size), tensors, device)
        if p.memory[size] > cap:
            break
        p.batch = size
        size *= 2
    if p.batch == 0:
        need = "more than the device has" if p.memory[1] == math.inf else f"{p.memory[1] / GB:.3g} GB"
        raise ValueError(f"memory_cap_gb={cap / GB:g}: {p.role} {p.spec.name} needs {need} to decode one example "
                         "(weights, KV cache, activations): raise memory_cap_gb, or shorten the inputs "
                         "(data.max_prompt_tokens, data.decoding.max_new_tokens)")
    log.info(f"{p.role} {p.spec.name}: batch {p.batch} fits {cap / GB:g} GB (peak bytes per batch: "
             + ", ".join(f"{b}: {m:,.0f}" for b, m in p.memory.items()) + ")")


def _peak_bytes(call: Callable[[], object], tensors: list[torch.Tensor], device: torch.device) -> float:
    """Peak bytes `call` needs: the model's weights and buffers (`tensors`) and every tensor alive
    at once during it (see the module docstring). A CUDA out-of-memory error: infinite."""
    if device.type != "cuda":
        with LiveTensorBytes(tensors) as counter:
            call()
        return counter.peak
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        call()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return math.inf
    torch.cuda.synchronize(device)
    own = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())  # tied: once
    return own + torch.cuda.max_memory_allocated(device) - before


def _timed(call: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall time of `call` (CUDA: its kernels finished too), and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def _rows(models: list[_Profiled], reference: str) -> list[dict]:
    rows = []
    for p in models:
        median = {kind: statistics.median(times) for kind, times in p.times.items()}
        rows.append({"role": p.role, "model": p.spec.name, "dtype": str(next(p.model.parameters()).dtype)[6:],
                     "params": count_parameters(p.model), "flops": p.flops, "forward_ms": 1000 * median["forward"],
                     "generate_ms": 1000 * median["generate"], "tokens": statistics.fmean(p.tokens),
                     "batch": p.batch, "peak_mb": p.memory[p.batch] / 10**6,
                     "examples_per_min": 60 * p.batch / median["throughput"]})
    base = next(r for r in rows if r["role"] == reference)
    for row in rows:
        for key in RATIOS:
            ratio_key = f"{key.removesuffix('_ms')}_x"
            row[ratio_key] = row[key] / base[key] if row[key] is not None and base[key] else None
    return rows


def _si(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def markdown(rows: list[dict], run: ProfileRun, device: torch.device) -> str:
    """The table and what its columns mean."""
    ref = run.reference
    head = ["role", "model", "dtype", "params", "FLOPs/example", f"forward ms (batch {run.batch_size})",
            "generate ms/example", "tokens/example", "batch", "peak MB", "examples/min",
            f"params vs {ref}", f"FLOPs vs {ref}", f"forward vs {ref}", f"generate vs {ref}",
            f"examples/min vs {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        ratios = [f"{r[k]:.2f}x" if r[k] is not None else "-" for k in COLUMNS[-5:]]
        lines.append("| " + " | ".join([r["role"], r["model"], r["dtype"], f"{r['params']:,}", _si(r["flops"]),
                                        f"{r['forward_ms']:.1f}", f"{r['generate_ms']:.1f}", f"{r['tokens']:.1f}",
                                        str(r["batch"]), f"{r['peak_mb']:,.1f}", f"{r['examples_per_min']:,.0f}",
                                        *ratios]) + " |")
    decoding = run.data.decoding
    memory = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "live tensor bytes (LiveTensorBytes)"
    notes = [
        (f"Device {device}; data '{run.data_name}', its first {run.prompts} evaluation prompts; decoding "
         f"{decoding.strategy}, at most {decoding.max_new_tokens} new tokens; times: the median of {run.repeats} "
         f"timed run(s) after {run.warmup} warm-up run(s), models interleaved."),
        (f"forward: teacher-forced prompt + target, batch {run.batch_size} (FLOPs per example: that forward's, "
         "divided by the batch). generate: one prompt alone (batch 1); tokens/example: what it decoded."),
        (f"batch: the largest power of two up to {run.max_batch_size} whose decoding fits {run.memory_cap_gb:g} GB "
         f"(longest prompts, every sequence to {decoding.max_new_tokens} tokens; memory: {memory}; peak MB at that "
         "batch). examples/min: decoding at that batch."),
        f"'vs {ref}': the value divided by the {ref}'s.",
    ]
    return "\n".join(lines) + "\n\n" + "".join(f"- {n}\n" for n in notes)


def _write(out: Path, run: ProfileRun, rows: list[dict], models: list[_Profiled], device: torch.device) -> None:
    text = markdown(rows, run, device)
    write_atomic(out / "profile.md", f"# Cost profile: {' vs '.join(p.spec.name for p in models)}\n\n{text}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "profile.csv", buffer.getvalue())
    settings = {"device": str(device), "data": run.data_name, "prompts": run.prompts, "batch_size": run.batch_size,
                "max_batch_size": run.max_batch_size, "memory_cap_gb": run.memory_cap_gb, "repeats": run.repeats,
                "warmup": run.warmup, "reference": run.reference, "decoding": run.data.decoding.key()}
    details = {p.role: {"memory_bytes_by_batch": {str(b): m for b, m in p.memory.items()},
                        "times_s": p.times, "tokens": p.tokens} for p in models}
    write_json(out / "profile.json", {"settings": settings, "rows": rows, "details": details})
