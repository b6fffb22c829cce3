"""The teacher: a live frozen model, or the stored outputs of one (a black-box teacher's file).

Both answer the two questions a method asks of a teacher:
- `distributions(batch)`: its next-token distributions at every target position of `batch`
  (dense `[B, T, V]` logits from a live model; top-k log-probabilities `[B, T, k]` from a store,
  which has them only for its own outputs: `scores_any_sequence` is False);
- `outputs(prompts, decoding)`: its decoded outputs for every training prompt (generated once by
  a live model and cached on disk, or looked up in the store).
A third kind, a live teacher's top-k cached once per training sequence for methods on fixed
sequences, is `kdlight.training.teacher_cache.CachedSparseTeacher`.

The live teacher is deliberately *not* an `nn.Module` attribute of the LightningModule: an
unregistered model cannot reach the optimiser, the checkpoint's state dict, the saved
hyperparameters, or a DDP/FSDP gradient wrapper. It is placed on the module's device explicitly,
either replicated (a full copy per rank, the default) or sharded across ranks with FSDP2
(`placement="shard"`: each rank holds 1/world of its parameters, gathered layer by layer in each
forward pass). A sharded forward is collective, so every rank runs the same number of teacher
forwards: generation shares are equal and decoding is synced across ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kdlight.data.batch import Batch, collate
from kdlight.data.module import PromptItem
from kdlight.losses.fused import HeadInputs
from kdlight.losses.sparse import SparseTargets
from kdlight.methods.base import Method, PrepareContext
from kdlight.models.decoding import Decoding, generate, sampler
from kdlight.models.lm import output_head, set_training, take_positions, target_hidden, target_logits
from kdlight.targets.store import GenerationJournal, StoredSequence, TargetStore

log = logging.getLogger(__name__)

PLACEMENTS = ("replicate", "shard")
Outputs = dict[int, list[StoredSequence]]  # prompt index (of the training items, or validation examples) -> outputs


class Teacher(ABC):
    """What a method may ask of a teacher."""

    scores_any_sequence: ClassVar[bool] = True
    model: PreTrainedModel | None = None
    sharded: bool = False

    def to(self, device: torch.device) -> Teacher:
        return self

    @abstractmethod
    def distributions(self, batch: Batch, vocab_size: int, noisy: bool = True) -> torch.Tensor | SparseTargets:
        """The teacher at every target position of `batch`: [B, T, V] logits or [B, T, k] top-k.
        `noisy=False` switches a live teacher's training-time dropout off (held-out metrics)."""

    def at_positions(self, batch: Batch, vocab_size: int, positions: torch.Tensor,
                     head_inputs: bool = False) -> torch.Tensor | SparseTargets | HeadInputs:
        """The teacher at the flat target positions of `batch` (`kdlight.models.lm.target_positions`):
        [N, V] logits or [N, k] top-k rows. `head_inputs`: a live model may give its hidden
        states and output head instead, which the fused loss projects chunk by chunk."""
        targets = self.distributions(batch, vocab_size)
        if isinstance(targets, SparseTargets):
            return targets.take(positions)
        return take_positions(targets, positions)

    @abstractmethod
    def outputs(self, ctx: PrepareContext, decoding: Decoding, top_k: int = 0, batch_size: int = 32,
                cache_dir: str | None = None, seed: int = 0) -> Outputs:
        """Decoded outputs for every prompt of `ctx` (with top-k log-probabilities if `top_k`)."""

    def prepare(self, method: Method, sequences: Callable[[int], Iterable[Batch]],
                gather: Callable[[object], list[object]]) -> None:
        """Work before the first step, on every rank: a cached teacher scores `sequences(epoch)`,
        this rank's training batches of an epoch as the method's source makes them. Nothing by
        default."""

    def held_out(self) -> Teacher:
        """The teacher that scores held-out sequences (`val/kl_from_teacher`): itself, or the live
        model behind a cache, so the cache's price is measured against the live teacher."""
        return self

    def describe(self) -> str:
        return type(self).__name__


class LiveTeacher(Teacher):
    """A frozen model: evaluated, never trained, never saved with the student.

    Args:
        model: the teacher model (frozen here: no gradient, eval mode).
        placement: `replicate` or `shard` (see the module docstring).
        dropout: run the teacher's forward passes with dropout on (noisy KD); off by default.
    """

    def __init__(self, model: PreTrainedModel, placement: str = "replicate", dropout: bool = False):
        if placement not in PLACEMENTS:
            raise ValueError(f"teacher placement must be one of {PLACEMENTS}, got '{placement}'")
        if dropout and not dropout_rates(model):
            raise ValueError(f"noisy KD runs the teacher with dropout on, but this teacher ({type(model).__name__}) has "
                             "none, so it would be plain KD: a saved teacher keeps the dropout it was trained with "
                             "(train it with e.g. teacher.config.dropout_rate=0.1 for T5, "
                             "teacher.config.attention_dropout=0.1 for Llama/Qwen2); a random-init teacher takes "
                             "those settings directly")
        model.requires_grad_(False)
        model.eval()
        self.model, self.placement, self.dropout, self.sharded = model, placement, dropout, False
        self.generated = 0  # prompts this process decoded (0 when every output came from the cache)

    def to(self, device: torch.device) -> LiveTeacher:
        if not self.sharded and next(self.model.parameters()).device != device:
            self.model.to(device)
        if self.placement == "shard" and not self.sharded and _world_size() > 1:
            _shard(self.model)
            self.sharded = True
        return self

    def distributions(self, batch: Batch, vocab_size: int, noisy: bool = True) -> torch.Tensor:
        """[B, T, V] teacher logits. `no_grad` rather than `inference_mode`: inference tensors may
        not be saved for backward, and the divergence's backward needs the teacher's values."""
        # Set every time: a caller's .train() on a parent must never switch dropout on by accident.
        set_training(self.model, self.dropout and noisy)
        with torch.no_grad():
            return target_logits(self.model, batch, vocab_size)

    def at_positions(self, batch: Batch, vocab_size: int, positions: torch.Tensor,
                     head_inputs: bool = False) -> torch.Tensor | SparseTargets | HeadInputs:
        """With `head_inputs`, a replicated model with a plain output head (`output_head`) gives its
        hidden states at the positions and its head: its [N, V] logits are then formed chunk by
        chunk inside the loss, never all at once."""
        head = output_head(self.model) if head_inputs and not self.sharded else None
        if head is None:
            return super().at_positions(batch, vocab_size, positions)
        set_training(self.model, self.dropout)
        with torch.no_grad():
            return HeadInputs(target_hidden(self.model, batch, positions), head)

    def outputs(self, ctx: PrepareContext, decoding: Decoding, top_k: int = 0, batch_size: int = 32,
                cache_dir: str | None = None, seed: int = 0) -> Outputs:
        """Read the outputs from the cache, or generate them and cache them. The cache key covers
        the teacher checkpoint, every prompt's token ids, the decoding settings and `top_k`, so a
        change to any of them decodes again.

        Generation: the distinct prompts, sorted by text, are cut into chunks of `batch_size`; rank
        r decodes chunks r, r + world, ...; each chunk is seeded by its own number and journaled
        next to the cache as soon as it is done, so an interrupted run resumes at the chunks not yet
        written (by any rank, on any number of ranks) with the outputs an uninterrupted run gives.
        """
        key = self.cache_key(ctx, decoding, top_k, seed, batch_size)
        path = Path(cache_dir) / "teacher_outputs" / f"{_digest(key)}.jsonl" if cache_dir else None
        store = _read_cache(path, key)
        if store is None:
            started = time.perf_counter()
            distinct = sorted({item.text: item for item in ctx.prompts}.values(), key=lambda item: item.text)
            chunks = [distinct[i:i + batch_size] for i in range(0, len(distinct), batch_size)]
            journals = sorted(path.parent.glob(f"{path.stem}.rank*.partial")) if path else []
            journal = GenerationJournal(path.with_name(f"{path.stem}.rank{ctx.rank}.partial") if path else None,
                                        key | {"batch_size": batch_size}, journals)
            self._generate(chunks, self._share(len(chunks), ctx), ctx, decoding, top_k, seed, journal)
            produced: dict[str, list[StoredSequence]] = {}
            for part in ctx.gather(journal.outputs()):
                produced.update(part)
            if missing := [item.text for item in distinct if item.text not in produced]:
                raise RuntimeError(f"teacher outputs: {len(missing)} of {len(distinct)} prompts have no output after "
                                   f"every rank's were gathered (first: {missing[0][:80]!r})")
            store = TargetStore(key=key, top_k=top_k, vocab_size=ctx.vocab_size)
            for item in ctx.prompts:
                store.add(item.text, item.id, produced[item.text])
            if path is not None and ctx.rank == 0:
                store.save(path)
            ctx.gather(None)  # the store is written before any journal is removed
            if path is not None and ctx.rank == 0:
                for stale in path.parent.glob(f"{path.stem}.rank*.partial"):  # this run's, and any earlier run's
                    stale.unlink(missing_ok=True)
            log.info(f"teacher outputs: {len(distinct)} prompts decoded ({decoding.strategy}, "
                     f"{decoding.num_return_sequences} per prompt) in {time.perf_counter() - started:.1f}s"
                     + (f", cached at {path}" if path else ""))
        else:
            log.info(f"teacher outputs: {len(store)} read from {path}")
        return {item.index: store.lookup(item.text, item.id) for item in ctx.prompts}

    def cache_key(self, ctx: PrepareContext, decoding: Decoding, top_k: int, seed: int, batch_size: int) -> dict:
        """Sampled outputs depend on the seed and on how prompts are batched (one seed per chunk)."""
        prompts = sorted({(p.text, tuple(p.ids)) for p in ctx.prompts})
        digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
        sampled = decoding.strategy == "sample"
        key = {"teacher": teacher_fingerprint(self.model), "prompts": digest, "n_prompts": len(prompts),
               "vocab_size": ctx.vocab_size, "decoding": decoding.key(), "top_k": top_k,
               "seed": seed if sampled else None, "batch_size": batch_size if sampled else None}
        if sampled:  # only then: the keys of greedy and beam outputs stay as they were
            key["sampler"] = sampler(self.model, decoding, synced=self.sharded)
        return key

    def _share(self, n_chunks: int, ctx: PrepareContext) -> list[int]:
        """This rank's chunk numbers; equally many on every rank when the teacher is sharded (its
        forward is collective: a rank with fewer repeats its last chunk, decoded twice)."""
        mine = list(range(ctx.rank, n_chunks, ctx.world_size))
        if self.sharded:
            mine = mine or [0]
            mine += mine[-1:] * (-(-n_chunks // ctx.world_size) - len(mine))
        return mine

    def _generate(self, chunks: list[list[PromptItem]], mine: list[int], ctx: PrepareContext, decoding: Decoding,
                  top_k: int, seed: int, journal: GenerationJournal) -> None:
        """Decode this rank's chunks (`mine`, numbers into `chunks`) that no journal holds yet."""
        tokenizer = ctx.tokenizer
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        self.model.eval()
        # A sharded teacher's ranks decode in step, so every rank decodes all of its chunks again.
        todo = mine if self.sharded else [number for number in mine if number not in journal.chunks]
        if len(todo) < len(mine):
            log.info(f"teacher outputs: resuming, {len(mine) - len(todo)} of {len(mine)} chunks already generated")
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="teacher outputs", unit="batch",
                   disable=ctx.rank != 0 or not todo)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), bar:
            for number in todo:
                torch.manual_seed(seed * 1_000_003 + number)  # a chunk's draws, whichever rank decodes it, whenever
                chunk = chunks[number]
                prompts = collate([p.ids for p in chunk], [[eos]] * len(chunk), list(range(len(chunk))), pad).to(device)
                flat = generate(self.model, prompts, decoding, eos, pad, ctx.vocab_size, synced=self.sharded)
                n = decoding.num_return_sequences
                produced = {item.text: [StoredSequence(ids or [eos]) for ids in flat[row * n:(row + 1) * n]]
                            for row, item in enumerate(chunk)}
                if top_k:
                    self._add_top_k(chunk, produced, prompts, top_k, ctx.vocab_size, pad)
                journal.append(number, produced)
                self.generated += len(chunk)
                bar.update()

    @torch.no_grad()
    def _add_top_k(self, chunk: list[PromptItem], produced: dict[str, list[StoredSequence]], prompts: Batch, top_k: int, vocab_size: int,
                   pad: int) -> None:
        """The teacher's top-k log-probabilities at every position of its own outputs."""
        rows = [(row, sequence) for row, item in enumerate(chunk) for sequence in produced[item.text]]
        batch = collate([prompts.prompt_ids[r][prompts.prompt_mask[r].bool()].tolist() for r, _ in rows],
                        [s.ids for _, s in rows], list(range(len(rows))), pad).to(prompts.prompt_ids.device)
        log_probs = torch.log_softmax(target_logits(self.model, batch, vocab_size).float(), -1)
        values, ids = log_probs.topk(min(top_k, vocab_size), dim=-1)  # [R, T, k]
        for r, (_, sequence) in enumerate(rows):
            length = len(sequence.ids)
            sequence.top_ids = ids[r, :length].tolist()
            sequence.top_logprobs = values[r, :length].tolist()

    def describe(self) -> str:
        return f"live teacher {getattr(self.model, 'name_or_path', '') or type(self.model).__name__}"


class StoredTeacher(Teacher):
    """A teacher known only by its stored outputs (and their top-k log-probabilities, if given).

    It can drive sequence-level KD (the outputs as targets) and, when the store has
    log-probabilities, sparse token-level KD on those outputs; it cannot score other sequences
    (gold targets, student samples), and a prompt missing from the store is an error.
    """

    scores_any_sequence = False

    def __init__(self, store: TargetStore, path: str = ""):
        self.store, self.path = store, path
        self.has_log_probs = any(s.top_ids for sequences in store.outputs.values() for s in sequences)
        self._by_index: Outputs = {}

    def outputs(self, ctx: PrepareContext, decoding: Decoding, top_k: int = 0, batch_size: int = 32,
                cache_dir: str | None = None, seed: int = 0) -> Outputs:
        found = {item.index: self.store.lookup(item.text, item.id) for item in ctx.prompts}
        missing = [item for item in ctx.prompts if found[item.index] is None]
        if missing:
            raise KeyError(f"the stored teacher ({self.path}) has no outputs for {len(missing)} of {len(ctx.prompts)} "
                           f"prompts (first: id {missing[0].id}, prompt {missing[0].text[:80]!r}); "
                           "a stored teacher cannot generate new ones")
        if self.store.key and self.store.key.get("decoding") not in (None, decoding.key()):
            log.warning(f"the stored outputs were decoded with {self.store.key['decoding']}; the method asks for "
                        f"{decoding.key()}: the stored ones are used")
        self._by_index = found
        return found

    def require_log_probs(self, method: str = "a divergence") -> None:
        """Refuse a method that compares distributions when the store has text outputs only."""
        if not self.has_log_probs:
            raise ValueError(f"the stored teacher ({self.path}) has no log-probabilities (text outputs only), so "
                             f"{method} cannot compare distributions: use a method with CE on its outputs (seqkd)")

    def distributions(self, batch: Batch, vocab_size: int, noisy: bool = True) -> SparseTargets:
        self.require_log_probs()
        b, t = batch.target_ids.shape
        first = next(s for sequences in self.store.outputs.values() for s in sequences if s.top_ids)
        k = self.store.top_k or len(first.top_ids[0])
        ids = torch.zeros(b, t, k, dtype=torch.long)
        log_probs = torch.zeros(b, t, k)
        for row, (index, target) in enumerate(zip(batch.index.tolist(), batch.targets())):
            sequence = next((s for s in self._by_index.get(index, []) if s.ids == target), None)
            if sequence is None or sequence.top_ids is None:
                raise ValueError(f"the stored teacher has no distributions for this sequence of training example "
                                 f"{index}: it can only score its own stored outputs")
            ids[row, : len(target)] = torch.tensor(sequence.top_ids)
            log_probs[row, : len(target)] = torch.tensor(sequence.top_logprobs)
        device = batch.target_ids.device
        return SparseTargets(ids.to(device), log_probs.to(device))

    def describe(self) -> str:
        return f"stored teacher outputs {self.path} ({len(self.store)} inputs)"


@dataclass(frozen=True)
class StoredTeacherSpec:
    """A teacher given as a file of its outputs (see kdlight.targets.store for the format).

    Attributes:
        name: label in tables.
        path: the JSONL file.
    """

    name: str
    path: str


def dropout_rates(model: PreTrainedModel) -> dict[str, float]:
    """The model's non-zero dropout rates: its dropout modules', and its config's (attention
    dropout is often applied functionally, with no module)."""
    rates = {name: module.p for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)
             and module.p > 0}
    for name, value in model.config.to_dict().items():
        if "dropout" in name and isinstance(value, float) and value > 0:
            rates[f"config.{name}"] = value
    return rates


def teacher_fingerprint(model: PreTrainedModel) -> str:
    """Identify a teacher checkpoint cheaply: its saved weight files if it came from a folder, else a
    hash of its parameters (teachers built in memory are small; a sharded one is gathered, on every
    rank in the same order)."""
    source = str(getattr(model, "name_or_path", "") or "")  # a folder, a GGUF file, or "" (built in memory)
    folder = Path(source)
    weights = []
    if source and folder.is_dir():
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    elif source and folder.suffix == ".gguf" and folder.is_file():
        weights = [folder]
    if weights:
        stats = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
        return f"{folder.resolve()}:" + hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # DTensor shards
        digest.update(full.detach().to("cpu", torch.float32).numpy().tobytes())
    return "params:" + digest.hexdigest()[:16]


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _read_cache(path: Path | None, key: dict) -> TargetStore | None:
    if path is None or not path.exists():
        return None
    try:
        store = TargetStore.load(path)
        if store.key != key:
            raise ValueError("its key does not match")
        return store
    except (ValueError, KeyError, TypeError) as error:  # a cache can always be rebuilt
        log.warning(f"teacher outputs: ignoring unreadable cache {path} ({error}); generating again")
        return None


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _shard(model: PreTrainedModel) -> None:
    """FSDP2 per transformer layer (HF's `_no_split_modules`), then the rest, on the default group."""
    from torch.distributed.fsdp import fully_shard

    layer_types = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_types:
            fully_shard(module)
    fully_shard(model)
