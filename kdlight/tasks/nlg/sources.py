"""Readers of the real NLG data sets, each in the format its release uses.

Every source takes `root`, the folder of the user's copy (`data.task.source.root`), and returns its
training pool (`train`) and held-out splits (`valid`, `test`). Releases without a split of their
own (the SQuAD QG sample, the ART dev set, the XSum sample) are split here, seeded: the split is
part of the data's definition, so it is fixed by `seed`, not by the run's seed. A bad row raises an
error naming the file, the line (or item) and the field.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdlight.io import read_json, read_jsonl_numbered
from kdlight.tasks.nlg.task import NlgRecord

log = logging.getLogger(__name__)


def data_folder(root: str) -> Path:
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (data.task.source.root): point it at your copy")
    return folder


def data_file(root: str, name: str) -> Path:
    path = data_folder(root) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (data.task.source.root={root})")
    return path


def text_field(row: object, name: str, path: Path, where: str) -> str:
    """`row[name]` as stripped, non-empty text, or an error naming the file, place and field."""
    if not isinstance(row, dict):  # a ValueError, as every data error: the data module names the data set on it
        raise ValueError(f"{path}: {where} is a {type(row).__name__}, expected an object with '{name}'")  # noqa: TRY004
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "empty text" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{path}: {where}: '{name}' must be non-empty text, got {got} (keys: {sorted(row)})")
    return value.strip()


def hold_out(records: list[NlgRecord], n_valid: int, n_test: int, seed: int, what: str,
             keys: Sequence[Hashable] | None = None) -> dict[str, list[NlgRecord]]:
    """Split `records` into train / valid / test, seeded. Records sharing a key (e.g. one SQuAD
    paragraph) go to the same split, so no held-out input is seen in training; held-out splits are
    filled with whole groups until they hold at least `n_test` / `n_valid` records. Each split
    keeps the file order."""
    keys = list(keys) if keys is not None else [r.id for r in records]
    order = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(order)
    sizes = {key: 0 for key in order}
    for key in keys:
        sizes[key] += 1
    split_of, counts = {}, {"test": 0, "valid": 0}
    for key in order:
        split = next((s for s, n in (("test", n_test), ("valid", n_valid)) if counts[s] < n), "train")
        split_of[key] = split
        counts[split] = counts.get(split, 0) + sizes[key]
    splits: dict[str, list[NlgRecord]] = {"train": [], "valid": [], "test": []}
    for record, key in zip(records, keys):
        splits[split_of[key]].append(record)
    if not splits["train"]:
        raise ValueError(f"{what}: n_valid={n_valid} and n_test={n_test} leave no training inputs "
                         f"of {len(records)} (data.task.source.n_valid, n_test)")
    return {name: split for name, split in splits.items() if split or name == "train"}  # n_valid=0: no valid


@dataclass(frozen=True)
class ShakespeareSource:
    """Shakespeare's original lines -> modern English (Xu et al. 2012; the tokenised release of
    Jhamtani et al. 2017): `{train,valid,test}.{original,modern}.nltktok`, line i of one file
    parallel to line i of the other."""

    root: str

    def splits(self) -> dict[str, list[NlgRecord]]:
        return {split: self._read(split) for split in ("train", "valid", "test")}

    def _read(self, split: str) -> list[NlgRecord]:
        source, target = (data_file(self.root, f"{split}.{side}.nltktok") for side in ("original", "modern"))
        sources, targets = (path.read_text(encoding="utf-8").splitlines() for path in (source, target))
        if len(sources) != len(targets):
            raise ValueError(f"{source} has {len(sources)} lines but {target} has {len(targets)}: the files must "
                             "be parallel, line for line")
        records = []
        for line, (original, modern) in enumerate(zip(sources, targets), start=1):
            for path, text in ((source, original), (target, modern)):
                if not text.strip():
                    raise ValueError(f"{path}: line {line} is empty (its parallel line cannot be used)")
            records.append(NlgRecord(f"{split}:{line}", original.strip(), (modern.strip(),)))
        return records

    def describe(self) -> str:
        return f"Shakespeare in {self.root}"


@dataclass(frozen=True)
class SquadQGSource:
    """Question generation from SQuAD v1.1: `{context, question, answer}` items of one JSON list ->
    the question. Input: `<context>; answer: <answer>`. Held-out splits are whole paragraphs."""

    root: str
    file: str = "squad_qg_4330.json"
    n_valid: int = 300
    n_test: int = 500
    seed: int = 0

    def splits(self) -> dict[str, list[NlgRecord]]:
        path = data_file(self.root, self.file)
        items = read_json(path)
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of {{context, question, answer}}, "  # noqa: TRY004
                             f"got {type(items).__name__}")
        records, contexts = [], []
        for number, item in enumerate(items, start=1):
            context, question, answer = (text_field(item, f, path, f"item {number}")
                                         for f in ("context", "question", "answer"))
            records.append(NlgRecord(str(number), f"{context}; answer: {answer}", (question,), {"answer": answer}))
            contexts.append(context)
        return hold_out(records, self.n_valid, self.n_test, self.seed, str(path), keys=contexts)

    def describe(self) -> str:
        return f"SQuAD question generation in {self.root}/{self.file}"


@dataclass(frozen=True)
class ArtSource:
    """Abductive NLG on ART (Bhagavatula et al. 2020): `{obs1, obs2, hyp1, hyp2, label}` lines ->
    the plausible hypothesis `hyp<label>`. Input: `<obs1>; outcome: <obs2>`."""

    root: str
    file: str = "alphanli_dev_1532.jsonl"
    n_valid: int = 200
    n_test: int = 300
    seed: int = 0

    def splits(self) -> dict[str, list[NlgRecord]]:
        path = data_file(self.root, self.file)
        records = []
        for line, row in read_jsonl_numbered(path):
            obs1, obs2 = (text_field(row, f, path, f"line {line}") for f in ("obs1", "obs2"))
            label = row.get("label")
            if label not in (1, 2) or isinstance(label, bool):
                raise ValueError(f"{path}: line {line}: 'label' must be 1 or 2 (which hypothesis is right), "
                                 f"got {label!r}")
            hypothesis = text_field(row, f"hyp{label}", path, f"line {line}")
            story = row.get("story_id")
            records.append(NlgRecord(str(story) if story is not None else str(line), f"{obs1}; outcome: {obs2}",
                                     (hypothesis,)))
        return hold_out(records, self.n_valid, self.n_test, self.seed, str(path))

    def describe(self) -> str:
        return f"ART abductive generation in {self.root}/{self.file}"


@dataclass(frozen=True)
class XSumSource:
    """Extreme summarisation (Narayan et al. 2018): `{id, document, summary}` lines (a line whose
    document is empty, as a few in the release are, is skipped and counted in the log). Documents are
    cut to their first `max_document_words` words here, because the data module cuts an over-long
    prompt at its start, which for news would drop the lead that the summary draws on most."""

    root: str
    file: str = "xsum_1000.jsonl"
    n_valid: int = 100
    n_test: int = 200
    seed: int = 0
    max_document_words: int | None = 400

    def splits(self) -> dict[str, list[NlgRecord]]:
        path = data_file(self.root, self.file)
        records, empty = [], []
        for line, row in read_jsonl_numbered(path):
            summary = text_field(row, "summary", path, f"line {line}")
            if row.get("document") == "":  # the release has a few (photo galleries): nothing to summarise
                empty.append(line)
                continue
            document = text_field(row, "document", path, f"line {line}")
            identifier = row.get("id")
            records.append(NlgRecord(str(identifier) if identifier is not None else str(line),
                                     first_words(document, self.max_document_words), (summary,)))
        if empty:
            log.info(f"{path}: {len(empty)} lines with an empty document skipped (lines {empty[:5]})")
        return hold_out(records, self.n_valid, self.n_test, self.seed, str(path))

    def describe(self) -> str:
        return f"XSum in {self.root}/{self.file}"


def first_words(text: str, n: int | None) -> str:
    """The first `n` whitespace-separated words of `text`, its own spacing and line breaks kept."""
    if n is None:
        return text
    words = list(re.finditer(r"\S+", text))
    return text if len(words) <= n else text[: words[n - 1].end()]


@dataclass(frozen=True)
class E2ESource:
    """E2E NLG (Novikova et al. 2017): CSV files with columns `mr` (a meaning representation such
    as `name[Alimentum], area[city centre]`) and `ref` (one human text), one row per reference;
    rows of one MR become one input with all its references. The release's devset is the training
    pool here (minus `n_valid` MRs held out as `valid`); its test set with references is `test`."""

    root: str
    train_file: str = "devset.csv"
    test_file: str = "testset_w_refs.csv"
    n_valid: int = 50
    seed: int = 0

    def splits(self) -> dict[str, list[NlgRecord]]:
        pool = self._read(self.train_file)
        splits = hold_out(pool, self.n_valid, 0, self.seed, str(Path(self.root) / self.train_file))
        return splits | {"test": self._read(self.test_file)}

    def _read(self, name: str) -> list[NlgRecord]:
        path = data_file(self.root, name)
        refs: dict[str, list[str]] = {}
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if missing := {"mr", "ref"} - set(reader.fieldnames or ()):
                raise ValueError(f"{path}: no column {sorted(missing)} in the header (columns: {reader.fieldnames})")
            for row in reader:
                mr, ref = (text_field(row, c, path, f"line {reader.line_num}") for c in ("mr", "ref"))
                refs.setdefault(mr, []).append(ref)
        return [NlgRecord(f"{Path(name).stem}:{k}", mr, tuple(texts)) for k, (mr, texts) in enumerate(refs.items(), 1)]

    def describe(self) -> str:
        return f"E2E NLG in {self.root}"
