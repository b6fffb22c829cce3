"""The teacher's own outputs as targets (SeqKD; half of f-distill's mixture), generated once and cached.

SeqKD (Kim & Rush, EMNLP 2016) trains the student on the teacher's decoded outputs instead of the
gold targets. Decoding the whole training set costs as much as several epochs of training, and
every student of a sweep that shares the teacher needs the same outputs, so they are generated
once before the first step and kept on disk under a key made of

- the teacher checkpoint (its folder and the size and modification time of its weight files; a
  teacher built in memory is keyed by a hash of its parameters),
- the data (a hash of every training prompt's token ids, which also covers the tokenizer and the
  prompt format), and
- the decoding settings (greedy or sampled, temperature, top-p, length, seed).

Any change to one of them gives a new key, hence a new generation; a second run with the same key
reads the file and never calls the teacher's `generate`. Files are written atomically (a temporary
file, then `os.replace`), so a killed run leaves either no cache or a complete one. Under DDP each
rank decodes its share of the prompts and rank 0 writes the union.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.batch import Batch, collate, pad_targets
from kdlight.methods.base import StepContext
from kdlight.models.lm import generate

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class Prompts:
    """What a source needs before training to precompute targets: every training prompt, and how
    to share the work across ranks.

    Attributes:
        items: (example index, prompt token ids) for every training example.
        teacher: the frozen teacher, on its device.
        tokenizer: the shared tokenizer.
        vocab_size: the vocabulary shared by teacher and student.
        rank, world_size: this process among the training processes.
        gather: all ranks' objects, in rank order (the identity on one process).
        sharded: the teacher is sharded across ranks, so its forward passes are collective: every
            rank must decode the same number of batches and steps.
    """

    items: list[tuple[int, list[int]]]
    teacher: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int
    rank: int = 0
    world_size: int = 1
    gather: Callable[[object], list[object]] = field(default=lambda obj: [obj])
    sharded: bool = False

    def share(self) -> list[tuple[int, list[int]]]:
        """This rank's prompts; equally many on every rank when the teacher is sharded (a rank
        with one fewer repeats its last prompt, whose output is then simply written twice)."""
        mine = self.items[self.rank::self.world_size]
        if self.sharded and mine:
            mine += mine[-1:] * (-(-len(self.items) // self.world_size) - len(mine))
        return mine


@dataclass
class TeacherOutputs:
    """Replace each gold target with the teacher's (cached) output for the same prompt.

    Attributes:
        cache_dir: where the generated outputs are kept (`<cache_dir>/teacher_outputs/<key>.json`).
        do_sample: sample instead of greedy (or beam) decoding.
        num_beams: beam search width when not sampling (SeqKD: the teacher's beam output).
        temperature, top_p: sampling settings (ignored when not sampling).
        max_new_tokens: longest output.
        batch_size: prompts decoded together.
        seed: random seed of sampled decoding (part of the key only when sampling).
    """

    cache_dir: str
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 32
    seed: int = 0
    needs_teacher: bool = True
    outputs: dict[int, list[int]] | None = field(default=None, repr=False)
    generated: int = field(default=0, repr=False)  # prompts decoded by this process (0 on a cache hit)

    def prepare(self, prompts: Prompts) -> None:
        """Load the outputs for these prompts from the cache, or generate and cache them."""
        key = self.cache_key(prompts)
        path = Path(self.cache_dir) / "teacher_outputs" / f"{_digest(key)}.json"
        cached = _read(path, key)
        if cached is not None:
            log.info(f"teacher outputs: {len(cached)} read from {path}")
            self.outputs = cached
            return
        started = time.perf_counter()
        produced = self._generate(prompts.share(), prompts)
        merged: dict[int, list[int]] = {}
        for part in prompts.gather(produced):
            merged.update(part)
        if prompts.rank == 0:
            _write_atomic(path, {"format": CACHE_FORMAT, "key": key, "outputs": {str(i): v for i, v in merged.items()}})
        log.info(f"teacher outputs: {len(merged)} generated in {time.perf_counter() - started:.1f}s, cached at {path}")
        self.outputs = merged

    def _generate(self, items: list[tuple[int, list[int]]], prompts: Prompts) -> dict[int, list[int]]:
        tokenizer, produced = prompts.tokenizer, {}
        device = next(prompts.teacher.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                batch = collate([p for _, p in chunk], [[tokenizer.eos_token_id]] * len(chunk),
                                [i for i, _ in chunk], tokenizer.pad_token_id)
                batch = Batch(*(t.to(device) for t in (batch.prompt_ids, batch.prompt_mask, batch.target_ids,
                                                        batch.target_mask, batch.index)))
                outputs = generate(prompts.teacher, batch, self.max_new_tokens, tokenizer.eos_token_id,
                                   prompts.vocab_size, do_sample=self.do_sample, temperature=self.temperature,
                                   top_p=self.top_p, num_beams=self.num_beams, synced=prompts.sharded)
                produced.update({i: out or [tokenizer.eos_token_id] for (i, _), out in zip(chunk, outputs)})
        self.generated += len(items)
        return produced

    def cache_key(self, prompts: Prompts) -> dict:
        decoding = {"do_sample": self.do_sample, "max_new_tokens": self.max_new_tokens}
        if not self.do_sample:
            decoding["num_beams"] = self.num_beams
        else:
            decoding |= {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        data = hashlib.sha256(json.dumps(sorted(prompts.items)).encode()).hexdigest()
        return {"teacher": teacher_fingerprint(prompts.teacher), "prompts": data, "n_prompts": len(prompts.items),
                "vocab_size": prompts.vocab_size, "decoding": decoding}

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        ids, mask = pad_targets(self.lookup(gold.index.tolist()), ctx.tokenizer.pad_token_id)
        return gold.with_targets(ids.to(gold.target_ids.device), mask.to(gold.target_mask.device))

    def lookup(self, indices: Sequence[int]) -> list[list[int]]:
        if self.outputs is None:
            raise RuntimeError("TeacherOutputs.prepare(...) must run before training (the loop does it at fit start)")
        return [self.outputs[i] for i in indices]


def teacher_fingerprint(model: PreTrainedModel) -> str:
    """Identify a teacher checkpoint cheaply: its saved weight files if it came from a folder, else a
    hash of its parameters (teachers built in memory are small; a sharded one is gathered, on every
    rank in the same order)."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) if folder.is_dir() else []
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


def _read(path: Path, key: dict) -> dict[int, list[int]] | None:
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        if stored.get("format") != CACHE_FORMAT or stored.get("key") != key:
            raise ValueError("its key does not match")
        return {int(i): v for i, v in stored["outputs"].items()}
    except (ValueError, KeyError, AttributeError) as error:  # a cache can always be rebuilt
        log.warning(f"teacher outputs: ignoring unreadable cache {path} ({error}); generating again")
        return None


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
