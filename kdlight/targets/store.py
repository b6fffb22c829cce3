"""Stores of generated target sequences: K per input, with what made them and, where the teacher
gave them, its top-k log-probabilities at every position.

One format serves two purposes:
- the cache of a live teacher's outputs (written by kdlight, keyed by teacher checkpoint, prompts
  and decoding), reused by every student of a sweep;
- the outputs of a black-box teacher given as a file (`model@teacher=stored teacher.path=...`),
  which drive sequence-level KD (CE on them) and, where log-probabilities are included, sparse
  token-level KD, with no teacher model loaded.

File format (JSON lines). kdlight's own files start with a header line
`{"kdlight_targets": 1, "key": {...}, "top_k": k, "vocab_size": V}`, then one line per input:
`{"prompt": text, "id": example id, "outputs": [{"ids": [...], "top_ids": [[...], ...],
"top_logprobs": [[...], ...]}, ...]}` (`ids` end with EOS; `top_ids`/`top_logprobs` have one row of
k per position, or are absent). A black-box teacher's file needs no header: each line has `prompt`
(or `id`) and `output` (one text) or `outputs` (texts); texts are tokenised with the run's
tokenizer. Inputs are matched by prompt text, else by example id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kdlight.io import read_jsonl_numbered, write_jsonl

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class StoredSequence:
    """One stored output: token ids (ending with EOS) and, optionally, [T, k] top-k rows."""

    ids: list[int]
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None

    def as_record(self) -> dict:
        record: dict = {"ids": self.ids}
        if self.top_ids is not None:
            record |= {"top_ids": self.top_ids, "top_logprobs": self.top_logprobs}
        return record


@dataclass
class TargetStore:
    """Outputs by input (prompt text, and example id where known).

    Attributes:
        outputs: prompt text -> its stored sequences.
        ids: example id -> prompt text (for files keyed by id).
        key: what made the outputs (teacher, prompts, decoding); None for a foreign file.
        top_k: log-probabilities kept per position (0: none).
        vocab_size: the vocabulary the token ids and log-probabilities refer to (None: unknown).
    """

    outputs: dict[str, list[StoredSequence]] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    key: dict | None = None
    top_k: int = 0
    vocab_size: int | None = None

    def add(self, prompt: str, example_id: str | None, sequences: list[StoredSequence]) -> bool:
        """Store `sequences` for `prompt`; returns False if the prompt had other outputs already
        (identical prompts share outputs: the last ones win)."""
        replaced = prompt in self.outputs and self.outputs[prompt] != sequences
        self.outputs[prompt] = sequences
        if example_id is not None:
            self.ids[example_id] = prompt
        return not replaced

    def lookup(self, prompt: str, example_id: str | None = None) -> list[StoredSequence] | None:
        if prompt in self.outputs:
            return self.outputs[prompt]
        if example_id is not None and example_id in self.ids:
            return self.outputs[self.ids[example_id]]
        return None

    def save(self, path: str | Path) -> Path:
        """Write atomically (a killed run leaves no half-written store)."""
        by_prompt = {prompt: example_id for example_id, prompt in self.ids.items()}
        header = {"kdlight_targets": FORMAT_VERSION, "key": self.key, "top_k": self.top_k,
                  "vocab_size": self.vocab_size}
        lines = [{"prompt": prompt, "id": by_prompt.get(prompt), "outputs": [s.as_record() for s in sequences]}
                 for prompt, sequences in self.outputs.items()]
        return write_jsonl(path, [header, *lines])

    @classmethod
    def load(cls, path: str | Path, encode: Callable[[str], list[int]] | None = None) -> TargetStore:
        """Read a store; `encode` (text -> ids ending with EOS) is needed for files holding texts."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher outputs file not found: {path}")
        rows = read_jsonl_numbered(path)
        store = cls()
        if rows and isinstance(rows[0][1], dict) and "kdlight_targets" in rows[0][1]:
            header = rows.pop(0)[1]
            if header["kdlight_targets"] != FORMAT_VERSION:
                raise ValueError(f"{path}: store format {header['kdlight_targets']}, this kdlight reads "
                                 f"{FORMAT_VERSION}")
            store.key, store.top_k = header.get("key"), header.get("top_k", 0)
            store.vocab_size = header.get("vocab_size")
        conflicts = 0
        for line, row in rows:
            prompt, example_id = _identify(row, path, line)
            sequences = [_sequence(o, path, line, encode) for o in _outputs(row, path, line)]
            conflicts += not store.add(prompt, example_id, sequences)
        if conflicts:
            log.warning(f"{path}: {conflicts} lines repeat an earlier prompt with other outputs; identical prompts "
                        "share outputs, so the last ones are used")
        return store

    def __len__(self) -> int:
        return len(self.outputs)


def _identify(row: object, path: Path, line: int) -> tuple[str, str | None]:
    if not isinstance(row, dict) or not ("prompt" in row or "id" in row):
        raise ValueError(f"{path}: line {line} needs a 'prompt' or an 'id' to match it to an input")
    example_id = None if row.get("id") is None else str(row["id"])
    return str(row.get("prompt", f"id:{example_id}")), example_id


def _outputs(row: dict, path: Path, line: int) -> Iterable[object]:
    if "outputs" in row and isinstance(row["outputs"], list) and row["outputs"]:
        return row["outputs"]
    if isinstance(row.get("output"), str):
        return [row["output"]]
    raise ValueError(f"{path}: line {line} has no 'output' (a text) or 'outputs' (a non-empty list)")


def _sequence(output: object, path: Path, line: int, encode: Callable[[str], list[int]] | None) -> StoredSequence:
    if isinstance(output, str):
        if encode is None:
            raise ValueError(f"{path}: line {line} holds text outputs, which need the run's tokenizer")
        return StoredSequence(encode(output))
    if not isinstance(output, dict) or not isinstance(output.get("ids"), list):
        raise ValueError(f"{path}: line {line}: each output is a text or an object with 'ids'")
    top_ids, top_logprobs = output.get("top_ids"), output.get("top_logprobs")
    if (top_ids is None) != (top_logprobs is None) or (top_ids is not None and len(top_ids) != len(output["ids"])):
        raise ValueError(f"{path}: line {line}: 'top_ids' and 'top_logprobs' go together, one row per token")
    return StoredSequence(output["ids"], top_ids, top_logprobs)


class GenerationJournal:
    """Chunks of outputs appended to a file as they are generated, so an interrupted generation
    resumes where it stopped: a re-run with the same key skips the chunks already written (no
    duplicates, no gaps) and regenerates only a chunk whose line a kill cut short.

    File: a header line `{"journal": key}`, then one line per finished chunk
    `{"chunk": number, "prompts": [...], "outputs": [[record, ...], ...]}`, flushed to disk before the
    next chunk starts. Each rank writes its own file and reads every rank's (`others`), so a run
    resumed on another number of ranks skips what any of them wrote. A file with another key
    (other teacher, prompts, decoding or chunk size) is ignored, and one's own is started over.
    """

    def __init__(self, path: Path | None, key: dict, others: Iterable[Path] = ()):
        self.path, self.key = path, key
        self.chunks: dict[int, dict[str, list[StoredSequence]]] = {}
        for other in others:
            if other != path:
                self._read(other, rewrite=False)
        own: dict[int, dict[str, list[StoredSequence]]] = {}
        if path is not None and path.exists():
            own = self._read(path, rewrite=True)
        if path is not None and not own:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"journal": key}) + "\n")

    def _read(self, path: Path, rewrite: bool) -> dict[int, dict[str, list[StoredSequence]]]:
        """The chunks of one journal file with this key (added to `self.chunks`); a line cut short
        by a kill ends the file (with `rewrite`, it is dropped from the file, which is this rank's)."""
        lines = path.read_text().split("\n")
        read: dict[int, dict[str, list[StoredSequence]]] = {}
        try:
            if json.loads(lines[0]).get("journal") != self.key:
                return read
        except (json.JSONDecodeError, AttributeError):
            return read
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                chunk = json.loads(line)
                read[chunk["chunk"]] = {prompt: [_sequence(o, path, number, None) for o in outputs]
                                        for prompt, outputs in zip(chunk["prompts"], chunk["outputs"], strict=True)}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if any(rest.strip() for rest in lines[number:]):  # only the last line may be cut short by a kill
                    log.warning(f"{path}: line {number} is damaged; generating its chunk and those after again")
                if rewrite:
                    write_jsonl(path, [{"journal": self.key}] + [self._record(n, o) for n, o in read.items()])
                break
        self.chunks.update(read)
        return read

    @staticmethod
    def _record(number: int, outputs: dict[str, list[StoredSequence]]) -> dict:
        return {"chunk": number, "prompts": list(outputs),
                "outputs": [[s.as_record() for s in sequences] for sequences in outputs.values()]}

    def append(self, number: int, outputs: dict[str, list[StoredSequence]]) -> None:
        self.chunks[number] = outputs
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(self._record(number, outputs)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def outputs(self) -> dict[str, list[StoredSequence]]:
        """Every output written so far (by any rank), by prompt text."""
        return {prompt: sequences for chunk in self.chunks.values() for prompt, sequences in chunk.items()}
