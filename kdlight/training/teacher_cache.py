"""A cached sparse teacher: the live teacher's top-k log-probabilities, computed once per sequence.

Methods that distil on fixed sequences (gold targets: `fkd`, `rkd`; the teacher's stored outputs:
`seqkd_fkl`) ask the frozen teacher the same question every epoch, and every student of a sweep
asks it again. A KD step with a live teacher costs its forward pass on top of the student's
(3.4x an SFT step in the default study, where the teacher is 16x the student). Here the teacher's
top-k log-probabilities at every target position are computed once, before the first step, kept
on disk and read back by every later epoch and student; the step then runs the student only, with
the sparse divergence of `kdlight.losses.sparse` (the teacher's mass outside its top-k dropped and
both sides renormalised, or kept as one `rest` bucket). DistillKit keeps a teacher's top-k the
same way; what the truncation costs is measured in experiments/speed/README.md.

The cache is a folder per (teacher checkpoint and dtype, k, vocabulary size) under
`<cache_dir>/teacher_topk/`, holding shard files. An entry is keyed by its sequence's prompt and
target token ids, so a changed dataset, tokenizer or truncation never reads a stale entry, and
several datasets share one folder. Each shard is written once, atomically (temporary file, then
rename), with a checksum over its contents: a killed precompute keeps every shard it finished and
resumes with the sequences they lack; a truncated or altered shard is reported, deleted and its
sequences scored again, never used. Concurrent runs may both score a sequence; their shards agree.

Several ranks: each scores the sequences of its share of an epoch's batches, then every rank reads
the others' shards before the next epoch, so each sequence is scored once (given a `cache_dir` all
ranks see; in memory, a rank scores another's sequences when it meets them); the passes stop at the
first epoch that brings no sequence new to any rank. Sequences that change per step (KID's rewrites, on-policy
samples) or a teacher with dropout on (noisy KD) cannot be cached: such methods are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import struct
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import count
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdlight.data.batch import Batch
from kdlight.io import atomic_path, write_json
from kdlight.losses.sparse import MISSING_MASS, SparseTargets
from kdlight.methods.base import Method, PrepareContext
from kdlight.models.decoding import Decoding
from kdlight.training.teacher import LiveTeacher, Outputs, Teacher, teacher_fingerprint

log = logging.getLogger(__name__)

FORMAT = 1
FLUSH_SEQUENCES = 512  # a shard per this many newly scored sequences: what a killed precompute can lose
MAX_PASSES = 64  # epochs scanned for new sequences (K outputs per prompt need K); the rest are scored when met
Entry = tuple[torch.Tensor, torch.Tensor]  # ids [T, k] int32, log-probabilities [T, k] float32


@dataclass(frozen=True)
class TeacherCacheSpec:
    """A cached sparse teacher (`teacher_cache` in conf/train.yaml).

    Attributes:
        top_k: teacher tokens kept per target position (capped at the vocabulary size).
        missing_mass: what the divergence does with the teacher's mass outside its top-k:
            `renormalize` (drop it, renormalise both sides over the k tokens) or `rest` (one
            extra bucket for it, on both sides).
        cache_dir: where the cache folder lives (`<cache_dir>/teacher_topk/`); None: in memory,
            for this run only.
    """

    top_k: int
    missing_mass: str = "renormalize"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"teacher_cache.top_k must be a positive number of tokens (e.g. 16, 64, 256) or null "
                             f"(no cache: the live teacher every step), got {self.top_k!r}")
        if self.missing_mass not in MISSING_MASS:
            raise ValueError(f"teacher_cache.missing_mass must be one of {MISSING_MASS}, got '{self.missing_mass}'")


def check_cacheable(method: Method, placement: str = "replicate") -> None:
    """Refuse what a cache of fixed sequences cannot serve, naming the setting to change."""
    why = None
    if method.divergence is None:
        why = "has no divergence to the teacher (nothing to cache)"
    elif not method.source.fixed_sequences:
        why = (f"trains on sequences that change from step to step ({type(method.source).__name__}: student "
               "samples or rewrites), which no precomputed teacher can score")
    elif method.teacher_dropout:
        why = "runs the teacher with dropout on (noisy KD): a different teacher every forward"
    elif placement != "replicate":
        why = f"shards the teacher (loop.teacher_placement={placement}), whose forward is collective"
    if why:
        raise ValueError(f"teacher_cache.top_k is set, but method '{method.name}' {why}: set teacher_cache.top_k=null "
                         "(the live teacher every step), or use a method on fixed sequences (fkd, rkd, seqkd_fkl)")


def with_missing_mass(method: Method, missing_mass: str) -> Method:
    """`method` whose divergence treats the teacher's mass outside its top-k as `missing_mass`."""
    if method.divergence is None or method.divergence.missing_mass == missing_mass:
        return method
    return replace(method, divergence=replace(method.divergence, missing_mass=missing_mass))


def sequence_key(prompt: torch.Tensor, target: torch.Tensor) -> str:
    """An entry's key: its prompt and target token ids (1-D tensors), length-prefixed so no two
    (prompt, target) pairs share one."""
    digest = hashlib.blake2b(digest_size=16)
    for ids in (prompt, target):
        digest.update(struct.pack("<q", ids.numel()))
        digest.update(ids.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def batch_keys(batch: Batch) -> list[str | None]:
    """Each row's key; None for a row without target tokens (nothing to score)."""
    prompts, prompt_mask = batch.prompt_ids.cpu(), batch.prompt_mask.cpu().bool()
    targets, target_mask = batch.target_ids.cpu(), batch.target_mask.cpu().bool()
    return [sequence_key(p[pm], t[tm]) if tm.any() else None
            for p, pm, t, tm in zip(prompts, prompt_mask, targets, target_mask)]


class TopKStore:
    """The entries of one cache key, in memory and (with a folder) in shard files.

    Args:
        folder: the key's folder (None: memory only).
        key: what the entries were computed with; every shard carries it.
    """

    def __init__(self, folder: Path | None, key: dict):
        self.folder, self.key = folder, key
        self.entries: dict[str, Entry] = {}
        self._read: set[str] = set()  # shard files already loaded
        self._pending: dict[str, Entry] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    @property
    def pending(self) -> int:
        """Entries added since the last shard was written."""
        return len(self._pending)

    def load(self) -> None:
        """Read every shard not read yet; a damaged one is reported and deleted (its sequences are
        then missing, and scored again)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("shard-*.pt")):
            if path.name in self._read:
                continue
            try:
                self.entries.update(self._read_shard(path))
                self._read.add(path.name)
            except FileNotFoundError:  # deleted by another run that found it damaged
                continue
            except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError,
                    zipfile.BadZipFile) as error:
                log.warning(f"teacher cache: {path} is damaged ({type(error).__name__}: {error}); deleted, its "
                            "sequences are scored again")
                path.unlink(missing_ok=True)

    def _read_shard(self, path: Path) -> dict[str, Entry]:
        shard = torch.load(path, map_location="cpu", weights_only=True)
        if shard.get("format") != FORMAT or shard.get("key") != self.key:
            raise ValueError("written for another teacher, k or format")
        keys, lengths, ids, log_probs = shard["sequences"], shard["lengths"], shard["ids"], shard["log_probs"]
        if shard.get("checksum") != _checksum(keys, lengths, ids, log_probs):
            raise ValueError("its checksum does not match its contents")
        offsets = [0, *torch.cumsum(lengths, 0).tolist()]
        # Copies, not views: a view would keep its whole shard in memory, once per shard holding the key.
        return {key: (ids[offsets[i]:offsets[i + 1]].clone(), log_probs[offsets[i]:offsets[i + 1]].clone())
                for i, key in enumerate(keys)}

    def add(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        self._pending[key] = entry

    def flush(self) -> None:
        """Write the entries added since the last flush as one new shard (atomically)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        if self.folder is None:
            return
        keys = list(pending)
        lengths = torch.tensor([pending[k][0].shape[0] for k in keys], dtype=torch.int64)
        ids = torch.cat([pending[k][0] for k in keys])
        log_probs = torch.cat([pending[k][1] for k in keys])
        shard = {"format": FORMAT, "key": self.key, "sequences": keys, "lengths": lengths, "ids": ids,
                 "log_probs": log_probs, "checksum": _checksum(keys, lengths, ids, log_probs)}
        # A name of its own: ranks and concurrent runs never write the same file.
        path = self.folder / f"shard-{time.time_ns()}-{os.getpid()}.pt"
        with atomic_path(path) as staging:
            torch.save(shard, staging)
        self._read.add(path.name)


def _checksum(keys: list[str], lengths: torch.Tensor, ids: torch.Tensor, log_probs: torch.Tensor) -> str:
    digest = hashlib.sha256(json.dumps(keys).encode())
    for tensor in (lengths, ids, log_probs):
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


class CachedSparseTeacher(Teacher):
    """A live teacher's top-k log-probabilities, read from a cache (see the module docstring).

    Args:
        live: the teacher model (without dropout, replicated).
        top_k: tokens kept per position (capped at `vocab_size`).
        vocab_size: the vocabulary teacher and student share.
        cache_dir: the cache's root (`<cache_dir>/teacher_topk/<key>/`); None: in memory only.
    """

    def __init__(self, live: LiveTeacher, top_k: int, vocab_size: int, cache_dir: str | None = None):
        if live.dropout or live.placement != "replicate":
            raise ValueError("teacher_cache.top_k needs a teacher without dropout, replicated on every rank "
                             f"(got dropout={live.dropout}, loop.teacher_placement={live.placement})")
        self.live, self.model = live, live.model
        self.top_k, self.vocab_size = min(top_k, vocab_size), vocab_size
        dtype = str(next(live.model.parameters()).dtype)
        key = {"format": FORMAT, "teacher": teacher_fingerprint(live.model), "dtype": dtype, "top_k": self.top_k,
               "vocab_size": vocab_size}
        folder = None
        if cache_dir is not None:
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
            folder = Path(cache_dir) / "teacher_topk" / digest
            if not (folder / "key.json").exists():
                write_json(folder / "key.json", key)  # for people: which teacher and k this folder holds
        self.store = TopKStore(folder, key)
        self.store.load()
        self.scored = 0  # sequences this process scored with the live teacher (0: all read from the cache)

    @property
    def folder(self) -> Path | None:
        return self.store.folder

    def to(self, device: torch.device) -> CachedSparseTeacher:
        self.live.to(device)
        return self

    def held_out(self) -> Teacher:
        return self.live

    def outputs(self, ctx: PrepareContext, decoding: Decoding, top_k: int = 0, batch_size: int = 32,
                cache_dir: str | None = None, seed: int = 0) -> Outputs:
        """The live teacher's decoded outputs (SeqKD's targets, cached by the live teacher itself)."""
        return self.live.outputs(ctx, decoding, top_k, batch_size, cache_dir, seed)

    def prepare(self, method: Method, sequences: Callable[[int], Iterable[Batch]],
                gather: Callable[[object], list[object]]) -> None:
        """Score every sequence of this rank's training batches that the cache lacks, epoch after
        epoch until one brings no sequence that any rank met before (gold: one pass and a check; K
        teacher outputs per prompt: K passes). After each epoch every rank reads the others' new
        shards, so a sequence scored by one rank is never scored again by another in a later epoch
        (ranks share an epoch's batches between them, and the share changes from epoch to epoch)."""
        check_cacheable(method, self.live.placement)
        started, before, seen = time.perf_counter(), self.scored, set()
        for epoch in count():
            if epoch == MAX_PASSES:
                log.warning(f"teacher cache: epoch {epoch} may still bring new sequences; they are scored when met")
                break
            met = set()
            for batch in tqdm(sequences(epoch), desc=f"teacher top-{self.top_k} (epoch {epoch})", unit="batch"):
                keys = batch_keys(batch)
                met.update(k for k in keys if k is not None)
                if any(k is not None and k not in self.store for k in keys):
                    self._score(batch, keys)
            self.store.flush()
            fresh = set().union(*gather(met - seen))  # every rank's shards of this epoch are written ...
            self.store.load()  # ... and read by every rank
            seen |= fresh
            if not fresh:
                break
        log.info(f"teacher cache: {len(seen)} training sequences, {self.scored - before} scored by the live teacher "
                 f"in {time.perf_counter() - started:.1f}s, the rest read from {self.folder or 'memory'}")

    def distributions(self, batch: Batch, vocab_size: int, noisy: bool = True) -> SparseTargets:
        """[B, T, k] top-k ids and log-probabilities (a sequence not cached yet is scored now and
        added). `noisy` is moot: a cached teacher has no dropout."""
        if vocab_size != self.vocab_size:
            raise ValueError(f"the teacher cache holds a {self.vocab_size}-token vocabulary, asked for {vocab_size}")
        keys = batch_keys(batch)
        if any(k is not None and k not in self.store for k in keys):
            self._score(batch, keys)
            self.store.flush()
        b, t = batch.target_ids.shape
        ids = torch.zeros(b, t, self.top_k, dtype=torch.long)
        log_probs = torch.zeros(b, t, self.top_k)
        for row, key in enumerate(keys):
            if key is not None:
                entry_ids, entry_log_probs = self.store.entries[key]
                ids[row, : entry_ids.shape[0]] = entry_ids
                log_probs[row, : entry_ids.shape[0]] = entry_log_probs
        device = batch.target_ids.device
        return SparseTargets(ids.to(device, non_blocking=True), log_probs.to(device, non_blocking=True))

    @torch.no_grad()
    def _score(self, batch: Batch, keys: list[str | None]) -> None:
        """The live teacher's top-k at every target position of the rows not cached yet."""
        rows = [r for r, k in enumerate(keys) if k is not None and k not in self.store]
        part = batch.take(torch.tensor(rows, device=batch.target_ids.device))
        logits = self.live.distributions(part, self.vocab_size, noisy=False)  # [b, T, V], eval mode
        values, ids = torch.log_softmax(logits.float(), -1).topk(self.top_k, dim=-1)  # [b, T, k]
        lengths = part.target_mask.sum(1).tolist()
        values, ids = values.cpu(), ids.to("cpu", torch.int32)
        for i, (row, length) in enumerate(zip(rows, lengths)):
            if keys[row] not in self.store:  # a batch may hold one sequence twice
                self.store.add(keys[row], (ids[i, :length].clone(), values[i, :length].clone()))
                self.scored += 1
        if self.store.pending >= FLUSH_SEQUENCES:
            self.store.flush()

    def describe(self) -> str:
        return f"top-{self.top_k} cache of the {self.live.describe()}"
