"""A black-box teacher's stored outputs: the BalDistill authors' ChatGPT rationales and synthetic examples.

BalDistill's teacher is an API model; the authors released what it wrote. Two kinds of file:

- rationale files (`*_chatgpt_cot_train_*.jsonl`): `{text, rationale, prediction, label}` per
  input the teacher annotated. `StoredRationales.lookup(text)` gives the rationale and the
  teacher's answer for a raw input text (the join key: texts are stored exactly as the sources
  read them).
- composed files (`*_chatgpt_cot_train_composed*.jsonl`): inputs the teacher wrote for tail
  domains, with a rationale and the answer it was asked for (`gt_choice`). `synthetic(domain)`
  gives them as `LongTailRecord`s. Rows whose text is a real input (the R52 file mixes the two)
  are not synthetic and are left out: pass the real data (`real`) to say which texts are real.

The teacher's answer is normalised as the scorer normalises a parsed one, so it compares with a
record's gold answer by equality: from the stored `prediction` field (R52's `Money-fx` ->
`money-fx`), or, with `answer_from="rationale"`, parsed from the rationale by the scorer's own
parser (the stored R52 predictions were read from the rationales by substring search: "earn"
rationales stored as "tin", "income"; the parser agrees with the gold label far more often). An
answer that is not one of the kind (an empty prediction, a label outside the set) is None.

A lookup of a text that is not in the store raises a KeyError naming the files: a study with a
stored teacher must not silently lose examples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from kdlight.eval.answers import check_kind, normalize_answer, parse_answer
from kdlight.io import read_jsonl_numbered
from kdlight.tasks.longtail.record import LongTailRecord, LongTailSource
from kdlight.tasks.longtail.sources import options_of, raw_field
from kdlight.tasks.nlg.sources import data_file

log = logging.getLogger(__name__)


class StoredRationales:
    """Stored teacher rationales by raw input text, and stored synthetic examples by domain.

    Files are read on first use. Where several rationale files hold the same text, the first file
    (in `files` order) wins; the number of such texts whose stored outputs differ is logged.

    Args:
        root: the folder of your copy (`data.task.source.root`); file names are under it.
        files: the rationale files.
        kind: how answers are normalised (the task's: `math`, `choice`, `label`, `number`).
        labels: the label set of a `label` task; None: the labels of `real` if it is a source.
        synthetic_files: the composed files of teacher-written examples; () for none.
        real: the real data: a `LongTailSource` (the texts of all its splits: pool and test) or a
            collection of texts. A composed row with one of these texts is not synthetic. None:
            every composed row is synthetic.
        answer_from: `prediction` (the stored field) or `rationale` (parsed from the rationale).
        text_field, rationale_field, prediction_field: the keys of a rationale file's rows.
        synthetic_answer_field, synthetic_domain_field: the keys of a composed row's answer (the
            one the teacher was asked for) and domain (MATH, QA: `gt_choice`, `source`; R52: both
            `label`).
    """

    def __init__(self, root: str, files: Sequence[str], kind: str, labels: Sequence[str] | None = None,
                 synthetic_files: Sequence[str] = (), real: LongTailSource | Iterable[str] | None = None,
                 answer_from: str = "prediction", text_field: str = "text", rationale_field: str = "rationale",
                 prediction_field: str = "prediction", synthetic_answer_field: str = "gt_choice",
                 synthetic_domain_field: str = "source"):
        if answer_from not in ("prediction", "rationale"):
            raise ValueError(f"answer_from must be 'prediction' or 'rationale', got {answer_from!r}")
        if not files and not synthetic_files:
            raise ValueError("StoredRationales needs at least one rationale or composed file")
        self.root, self.files, self.synthetic_files = root, list(files), list(synthetic_files)
        self.kind, self.answer_from = check_kind(kind), answer_from
        self.text_field, self.rationale_field, self.prediction_field = text_field, rationale_field, prediction_field
        self.synthetic_answer_field, self.synthetic_domain_field = synthetic_answer_field, synthetic_domain_field
        self._labels, self._real = None if labels is None else list(labels), real
        self._store: dict[str, tuple[str, str | None]] | None = None
        self._synthetic: dict[str, list[LongTailRecord]] | None = None

    @property
    def labels(self) -> list[str] | None:
        if self._labels is None and hasattr(self._real, "labels"):
            self._labels = self._real.labels()
        if self.kind == "label" and not self._labels:
            raise ValueError("StoredRationales(kind='label') needs the label set: pass labels, or the source as real")
        return self._labels

    def _answer(self, prediction: object, rationale: str) -> str | None:
        if self.answer_from == "rationale":
            return parse_answer(rationale, self.kind, self.labels)
        return normalize_answer(prediction if isinstance(prediction, str) else None, self.kind, self.labels)

    def _read(self) -> dict[str, tuple[str, str | None]]:
        if self._store is None:
            store: dict[str, tuple[str, str | None]] = {}
            differ = 0
            for name in self.files:
                path = data_file(self.root, name)
                for line, row in read_jsonl_numbered(path):
                    text = raw_field(row, self.text_field, path, line)
                    rationale = raw_field(row, self.rationale_field, path, line)
                    value = (rationale, self._answer(row.get(self.prediction_field), rationale))
                    if text not in store:
                        store[text] = value
                    elif store[text] != value:
                        differ += 1
            if differ:
                log.info(f"{self.describe()}: {differ} texts stored again with other outputs; the first file's kept")
            self._store = store
        return self._store

    def lookup(self, text: str) -> tuple[str, str | None]:
        """(rationale, the teacher's answer, normalised; None: none) for a raw input text."""
        store = self._read()
        if text not in store:
            raise KeyError(f"no stored teacher output for the text starting {text[:80]!r} in {self.files} under "
                           f"{self.root} ({len(store)} texts stored): the store covers another pool (for R52 and "
                           "MATH choose the source's pool 'stored')")
        return store[text]

    def __contains__(self, text: object) -> bool:
        return text in self._read()

    def __len__(self) -> int:
        return len(self._read())

    def texts(self) -> list[str]:
        """Every stored text, in file order."""
        return list(self._read())

    def _real_texts(self) -> set[str]:
        if self._real is None:
            return set()
        if hasattr(self._real, "splits"):
            return {r.text for records in self._real.splits().values() for r in records}
        return set(self._real)

    def _read_synthetic(self) -> dict[str, list[LongTailRecord]]:
        if self._synthetic is None:
            real, seen = self._real_texts(), set()
            by_domain: dict[str, list[LongTailRecord]] = {}
            skipped = {"real": 0, "repeated": 0, "no answer": 0}
            for name in self.synthetic_files:
                path = data_file(self.root, name)
                for line, row in read_jsonl_numbered(path):
                    text = raw_field(row, self.text_field, path, line)
                    if text in real or text in seen:
                        skipped["real" if text in real else "repeated"] += 1
                        continue
                    seen.add(text)
                    rationale = raw_field(row, self.rationale_field, path, line)
                    domain = raw_field(row, self.synthetic_domain_field, path, line).strip()
                    answer = normalize_answer(row.get(self.synthetic_answer_field), self.kind, self.labels)
                    if answer is not None and self.kind == "choice" and answer not in options_of(text):
                        answer = None  # "H" for a two-option question, or a question without options
                    if answer is None:
                        skipped["no answer"] += 1
                        continue
                    if self.kind == "label":  # the domain of a classification example is its label
                        domain = normalize_answer(domain, "label", self.labels) or domain
                    teacher = self._answer(row.get(self.prediction_field), rationale)
                    record = LongTailRecord(f"{path.name}:{line}", text, answer, domain, rationale,
                                            {"synthetic": True, "teacher_answer": teacher})
                    by_domain.setdefault(domain, []).append(record)
            if any(skipped.values()):
                log.info(f"{self.describe()}: composed rows left out: {skipped['real']} real texts, "
                         f"{skipped['repeated']} repeated texts, {skipped['no answer']} without a valid answer "
                         f"('{self.synthetic_answer_field}')")
            self._synthetic = by_domain
        return self._synthetic

    def synthetic(self, domain: str) -> list[LongTailRecord]:
        """The teacher-written examples of `domain`, in file order (rationale set, answer = the one
        the teacher was asked for); [] for a domain it wrote none for."""
        return list(self._read_synthetic().get(domain, []))

    def synthetic_domains(self) -> dict[str, int]:
        """How many synthetic examples each domain has."""
        return {domain: len(records) for domain, records in sorted(self._read_synthetic().items())}

    def describe(self) -> str:
        names = [Path(n).name for n in self.files + self.synthetic_files]
        return f"stored {self.kind} rationales {names} in {self.root}"
