"""Readers of the real long-tailed data sets: MATH, R52, a multiple-choice QA mix, GSM8K.

Every source takes `root`, the folder of the user's copy (`data.task.source.root`; the layout of
the files under it is each source's file arguments), and returns its training pool (`train`, what
data selection draws from) and `test` split as `LongTailRecord`s:

- `text` is the raw input exactly as in the file: a stored teacher's outputs (the BalDistill
  authors' ChatGPT rationales) are keyed by it, so it is never stripped or rewritten, except
  where a source builds its text from another release (R52 from raw Reuters, in the authors' form).
- `answer` is the gold answer normalised as the scorer normalises a parsed one
  (`kdlight.eval.answers.normalize_answer`), so that right means equal.
- `domain` is the subject (MATH), the topic label (R52) or the source data set (QA mix).
- ids are stable: `<file name>:<line>`, or the release's own id (`reuters:<newid>`).

A bad row raises an error naming the file, the line and the field.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kdlight.eval.answers import normalize_answer, normalize_math_answer, normalize_number
from kdlight.io import read_jsonl_numbered
from kdlight.tasks.longtail.record import LongTailRecord
from kdlight.tasks.nlg.sources import data_file

log = logging.getLogger(__name__)


def raw_field(row: object, name: str, path: Path, line: int) -> str:
    """`row[name]` as it is (not stripped: stored outputs are keyed by it), or an error naming the
    file, line and field when it is not non-empty text."""
    if not isinstance(row, dict):  # a ValueError, as every data error: the data module names the data set on it
        raise ValueError(f"{path}: line {line} is a {type(row).__name__}, "  # noqa: TRY004
                         f"expected an object with '{name}'")
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "empty text" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{path}: line {line}: '{name}' must be non-empty text, got {got} (keys: {sorted(row)})")
    return value


def gold(value: str, kind: str, labels: Sequence[str] | None, path: Path, line: int, name: str) -> str:
    """A gold answer normalised, or an error naming the place when it is not an answer of `kind`."""
    answer = normalize_answer(value, kind, labels)
    if answer is None:
        expected = {"label": "one of the label set", "choice": "an option letter", "number": "a number",
                    "math": "a non-empty answer"}[kind]
        raise ValueError(f"{path}: line {line}: '{name}' {value!r} is not {expected}")
    return answer


def drop_conflicts(records: list[LongTailRecord], what: str) -> list[LongTailRecord]:
    """One record per text, the first; a text given different answers is dropped altogether (its
    gold answer is undefined), and both are counted in the log."""
    answers: dict[str, set[str]] = defaultdict(set)
    for record in records:
        answers[record.text].add(record.answer)
    kept, seen = [], set()
    for record in records:
        if len(answers[record.text]) == 1 and record.text not in seen:
            kept.append(record)
            seen.add(record.text)
    conflicting = sum(len(a) > 1 for a in answers.values())
    if len(kept) < len(records):
        log.info(f"{what}: {len(records) - len(kept)} rows dropped: repeated texts, and {conflicting} texts given "
                 "different answers")
    return kept


# --- MATH -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathSource:
    """Competition mathematics (Hendrycks et al. 2021) in the BalDistill authors' long-tailed
    resampling: `{text, label, org, source}` lines (label: the answer; org: the full solution,
    ending in `\\boxed{}`; source: one of 7 subjects, the domain). The solution is the record's
    gold rationale; the answer is normalised as the MATH equivalence check does (the file's own
    answer in `meta["raw_answer"]`).

    Args:
        root: the folder of your copy (`data.task.source.root`).
        pool: `all` (every problem of `train_file`: 4,125, Algebra 1,744 ... Precalculus 187) or
            `stored` (only the problems the stored teacher rationales cover, `stored_file`: 2,100),
            which a study with the authors' stored teacher needs.
        train_file, test_file, stored_file: paths under `root`.
    """

    root: str
    pool: str = "all"
    train_file: str = "baldistill/math/corpus.jsonl"
    test_file: str = "baldistill/math/test_corpus.jsonl"
    stored_file: str = "baldistill/math/math_chatgpt_cot_train_count_300.jsonl"
    kind: ClassVar[str] = "math"

    def __post_init__(self) -> None:
        if self.pool not in ("all", "stored"):
            raise ValueError(f"data.task.source.pool must be 'all' or 'stored', got {self.pool!r}")

    def splits(self) -> dict[str, list[LongTailRecord]]:
        train = self._read(self.train_file)
        if self.pool == "stored":
            path = data_file(self.root, self.stored_file)
            covered = {raw_field(row, "text", path, line) for line, row in read_jsonl_numbered(path)}
            if missing := covered - {r.text for r in train}:
                raise ValueError(f"{path}: {len(missing)} texts are not problems of {self.train_file} (first: "
                                 f"{next(iter(missing))[:60]!r}): the stored rationales belong to another pool")
            train = [r for r in train if r.text in covered]
        return {"train": train, "test": self._read(self.test_file)}

    def _read(self, name: str) -> list[LongTailRecord]:
        path = data_file(self.root, name)
        records = []
        for line, row in read_jsonl_numbered(path):
            text, label, solution, subject = (raw_field(row, f, path, line) for f in ("text", "label", "org", "source"))
            answer = normalize_math_answer(label)
            if not answer:
                raise ValueError(f"{path}: line {line}: 'label' {label!r} is empty once normalised")
            records.append(LongTailRecord(f"{path.name}:{line}", text, answer, subject.strip(), solution.strip(),
                                          {"raw_answer": label}))
        return records

    def labels(self) -> list[str] | None:
        return None

    def describe(self) -> str:
        return f"MATH ({self.pool} of {self.train_file}) in {self.root}"


# --- R52 ------------------------------------------------------------------------------------------------------


def reuters_text(title: str, text: str) -> str:
    """A Reuters story in the form of the BalDistill R52 files: `TITLE. body`, each line of the body
    stripped and the lines joined by one space, a closing `REUTER` line dropped, `<` written `&lt;`
    (as the SGML release escapes it); a story without a body repeats its title (`TITLE.  TITLE`).
    `text` is the rebuilt split's text, which starts with `TITLE. ` when the story has a body.
    (This rebuilds 98% of the authors' training texts exactly; the rest differ in a space or in a
    trailing `reuter`.)"""
    if text.strip() == title.strip():
        formed = f"{title}.  {title}"
    else:
        body = text[len(title) + 2:] if text.startswith(f"{title}. ") else text
        lines = [part.strip() for part in body.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if lines and lines[-1].upper() == "REUTER":
            lines.pop()
        formed = f"{title}. {' '.join(lines)}"
    return formed.replace("<", "&lt;")


@dataclass(frozen=True)
class R52Source:
    """Reuters-21578 topic classification, the 52 single-label topics (R52): domain = gold label,
    from `earn` (2,840 training stories) down to topics with one.

    Args:
        root: the folder of your copy (`data.task.source.root`), holding the BalDistill R52 files
            and the R52 split rebuilt from raw Reuters (`reuters21578/`).
        pool: `stored`: the texts the stored teacher rationales cover (the union of `stored_files`,
            the BalDistill authors' ChatGPT files, labels from those files: 4,057 texts), what a
            study with the authors' stored teacher needs; `reuters`: the full R52 training split
            (`train_file`, 6,532 stories: 6,435 texts), its texts in the authors' form
            (`reuters_text`). Either way a repeated text is kept once, a text given two labels is
            dropped, and so is a stored text that is also a test story.
        stored_files, train_file, test_file: paths under `root`; test = the R52 test split (2,568
            stories; the few with neither title nor body are left out, counted in the log).
        labels_file: the 52 labels (tab-separated `id, split, label` lines); None: the labels
            found in the training and test splits.
    """

    root: str
    pool: str = "stored"
    stored_files: Sequence[str] = ("baldistill/r52/r52_chatgpt_cot_train_count_50.jsonl",
                                   "baldistill/r52/r52_chatgpt_cot_train_count_25.jsonl",
                                   "baldistill/r52/r52_chatgpt_cot_train_downsample.jsonl")
    train_file: str = "reuters21578/r52_train.jsonl"
    test_file: str = "reuters21578/r52_test.jsonl"
    labels_file: str | None = "baldistill/r52/R52_labels.txt"
    kind: ClassVar[str] = "label"

    def __post_init__(self) -> None:
        if self.pool not in ("stored", "reuters"):
            raise ValueError(f"data.task.source.pool must be 'stored' or 'reuters', got {self.pool!r}")

    def labels(self) -> list[str]:
        if self.labels_file is None:
            return sorted({r.answer for name in (self.train_file, self.test_file) for r in self._reuters(name, None)})
        path = data_file(self.root, self.labels_file)
        labels = set()
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if text.strip():
                label = text.split("\t")[-1].strip()
                if not label:
                    raise ValueError(f"{path}: line {line} has no label (expected tab-separated id, split, label)")
                labels.add(label)
        return sorted(labels)

    def splits(self) -> dict[str, list[LongTailRecord]]:
        labels = self.labels()
        test = self._reuters(self.test_file, labels)
        if self.pool == "reuters":
            return {"train": drop_conflicts(self._reuters(self.train_file, labels), self.train_file), "test": test}
        rows = []
        for name in self.stored_files:
            path = data_file(self.root, name)
            for line, row in read_jsonl_numbered(path):
                text, label = raw_field(row, "text", path, line), raw_field(row, "label", path, line)
                answer = gold(label, "label", labels, path, line, "label")
                rows.append(LongTailRecord(f"{path.name}:{line}", text, answer, answer))
        pool = drop_conflicts(rows, "R52 stored pool")
        tested = {r.text for r in test}
        if leaked := [r for r in pool if r.text in tested]:
            log.info(f"R52 stored pool: {len(leaked)} texts that are also test stories dropped (first: {leaked[0].id})")
            pool = [r for r in pool if r.text not in tested]
        return {"train": pool, "test": test}

    def _reuters(self, name: str, labels: Sequence[str] | None) -> list[LongTailRecord]:
        path = data_file(self.root, name)
        records, empty = [], []
        for line, row in read_jsonl_numbered(path):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "newid" not in row:
                raise ValueError(f"{path}: line {line}: expected an object with 'newid', 'title', 'text' and 'label'")
            if not row["text"].strip():  # a story with neither title nor body: nothing to classify
                empty.append(line)
                continue
            title = row.get("title")
            if not isinstance(title, str):  # a ValueError, as every data error
                raise ValueError(f"{path}: line {line}: 'title' must be text, got "  # noqa: TRY004
                                 f"{type(title).__name__}")
            label = raw_field(row, "label", path, line)
            answer = gold(label, "label", labels, path, line, "label") if labels is not None else label
            records.append(LongTailRecord(f"reuters:{row['newid']}", reuters_text(title, row["text"]), answer, answer,
                                          meta={"newid": row["newid"], "title": title}))
        if empty:
            log.info(f"{path}: {len(empty)} stories with neither title nor body left out (lines {empty[:5]})")
        return records

    def describe(self) -> str:
        return f"R52 ({self.pool} pool) in {self.root}"


# --- multiple-choice QA ---------------------------------------------------------------------------------------


def options_of(text: str) -> dict[str, str]:
    """The options of a question written `... Choice: (A) first (B) second ...`, by letter."""
    _, _, choices = text.rpartition("Choice:")
    parts = re.split(r"\(([A-J])\)", choices)
    return {letter: option.strip() for letter, option in zip(parts[1::2], parts[2::2])}


@dataclass(frozen=True)
class McqaSource:
    """The BalDistill authors' multiple-choice QA mix: 5,000 questions from 10 source data sets
    (the domain: race_string 1,752 ... arc_hard 122), `{text, label, domain}` lines, the text
    `[Passage: ...]\\nQuestion:...\\nChoice: (A) ... (B) ...`, the label an option letter.

    The release has no test set, so one is held out here, seeded and stratified: `test_per_domain`
    questions of every domain (the same number for each, so that every domain's accuracy, and
    their macro average, rests on the same number of questions), the rest is the pool. A question
    repeated in the file (78 are) is kept once, so no test question is in the pool.

    Args:
        root: the folder of your copy (`data.task.source.root`).
        file: the questions, under `root`.
        test_per_domain: questions held out per domain (each domain must keep at least one more).
        seed: the hold-out draw (part of the data's definition, not the run's seed).
    """

    root: str
    file: str = "baldistill/multichoice-qa/multichoice-qa_count_500.jsonl"
    test_per_domain: int = 50
    seed: int = 0
    kind: ClassVar[str] = "choice"

    def __post_init__(self) -> None:
        if self.test_per_domain < 1:
            raise ValueError(f"data.task.source.test_per_domain must be >= 1, got {self.test_per_domain}")

    def splits(self) -> dict[str, list[LongTailRecord]]:
        path = data_file(self.root, self.file)
        records = []
        for line, row in read_jsonl_numbered(path):
            text, label, domain = (raw_field(row, f, path, line) for f in ("text", "label", "domain"))
            options = options_of(text)
            answer = gold(label, "choice", None, path, line, "label")
            if answer not in options:
                raise ValueError(f"{path}: line {line}: 'label' {label!r} is not one of the question's options "
                                 f"{sorted(options)}")
            records.append(LongTailRecord(f"{path.name}:{line}", text, answer, domain.strip(),
                                          meta={"options": options}))
        records = drop_conflicts(records, str(path))
        by_domain: dict[str, list[LongTailRecord]] = defaultdict(list)
        for record in records:
            by_domain[record.domain].append(record)
        rng, held_out = random.Random(self.seed), set()
        for domain, members in sorted(by_domain.items()):
            if len(members) <= self.test_per_domain:
                raise ValueError(f"{path}: domain {domain!r} has {len(members)} questions, too few to hold out "
                                 f"test_per_domain={self.test_per_domain} and keep a pool "
                                 "(data.task.source.test_per_domain)")
            held_out.update(r.id for r in rng.sample(members, self.test_per_domain))
        return {"train": [r for r in records if r.id not in held_out], "test": [r for r in records if r.id in held_out]}

    def labels(self) -> list[str] | None:
        return None

    def describe(self) -> str:
        return f"multiple-choice QA mix in {self.root}/{self.file} ({self.test_per_domain} test questions per domain)"


# --- GSM8K ----------------------------------------------------------------------------------------------------

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, "<<48/2=24>>"


@dataclass(frozen=True)
class Gsm8kSource:
    """Grade-school math word problems (Cobbe et al. 2021): `{question, answer}` lines, the answer
    a worked solution ending `#### <number>`. One domain (`gsm8k`): a single-domain reference for
    the long-tail studies. The rationale is the solution without its `####` line and without the
    calculator annotations (`<<48/2=24>>`); the answer is the number.

    Args:
        root: the folder of your copy (`data.task.source.root`).
        train_file, test_file: paths under `root` (7,473 and 1,319 problems).
    """

    root: str
    train_file: str = "gsm8k/train.jsonl"
    test_file: str = "gsm8k/test.jsonl"
    domain: str = "gsm8k"
    kind: ClassVar[str] = "number"

    def splits(self) -> dict[str, list[LongTailRecord]]:
        return {"train": self._read(self.train_file), "test": self._read(self.test_file)}

    def _read(self, name: str) -> list[LongTailRecord]:
        path = data_file(self.root, name)
        records = []
        for line, row in read_jsonl_numbered(path):
            question, solution = raw_field(row, "question", path, line), raw_field(row, "answer", path, line)
            reasoning, found, final = solution.rpartition("####")
            if not found:
                raise ValueError(f"{path}: line {line}: 'answer' has no '#### <number>' line")
            answer = normalize_number(final)
            if answer is None:
                raise ValueError(f"{path}: line {line}: the '####' line holds {final.strip()!r}, not a number")
            rationale = _CALCULATOR.sub("", reasoning).strip()
            records.append(LongTailRecord(f"{path.name}:{line}", question, answer, self.domain, rationale or None))
        return records

    def labels(self) -> list[str] | None:
        return None

    def describe(self) -> str:
        return f"GSM8K in {self.root}"

