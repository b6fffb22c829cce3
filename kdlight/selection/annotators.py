"""The teacher of budgeted distillation: it writes rationales for selected inputs and new inputs
for domains whose pool has run out.

Two kinds, one interface (`Annotator`):
- `ModelAnnotator`: a local model (a kdlight-trained teacher: a long-tail task with `role: teacher`,
  kdlight.tasks.longtail.teacher). It annotates an input with the gold answer in its prompt
  (`hint`) and synthesises inputs for a domain (`synthesis_prompt`); generation is journaled
  and cached in the stage's folder, so a killed stage resumes without decoding again what was done.
- `StoredAnnotator`: a black-box teacher's stored outputs (the BalDistill authors' ChatGPT
  rationales and synthetic tail examples). A request outside the store is an error, never a skip.

Both return the teacher's own text and the answer parsed from it (which may differ from the gold
answer: the pipeline may drop such rationales, which still cost budget).
"""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kdlight.data.module import PromptItem, encode_prompts
from kdlight.data.tokenizer import saved_tokenizer
from kdlight.methods.base import PrepareContext
from kdlight.models.build import build_model
from kdlight.models.decoding import Decoding
from kdlight.models.vocab import ModelVocab, shared_vocab_size
from kdlight.tasks.longtail.record import ANSWER_PREFIX, LongTailRecord
from kdlight.tasks.longtail.teacher import hint, synthesis_prompt
from kdlight.training.teacher import LiveTeacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Annotation:
    """What the teacher wrote for one input.

    Attributes:
        rationale: its reasoning, without its final answer line.
        answer: its final answer, parsed and normalised as the scorer does; None: none found.
    """

    rationale: str
    answer: str | None


def split_answer_line(text: str) -> str:
    """The rationale part of a generated `<rationale>\\nThe answer is <answer>.` text."""
    head, found, _ = text.rpartition(ANSWER_PREFIX)
    return head.strip() if found else text.strip()


class Annotator(ABC):
    """A teacher that annotates and synthesises."""

    @abstractmethod
    def annotate(self, records: Sequence[LongTailRecord], workdir: Path) -> list[Annotation]:
        """A rationale (and the teacher's answer) for each record, given its gold answer."""

    @abstractmethod
    def synthesize(self, domain: str, n: int, used: set[str], workdir: Path, seed: int) -> list[LongTailRecord]:
        """Up to `n` new examples of `domain`, annotated (rationale set, answer = the teacher's),
        none whose id is in `used`. Fewer than `n` when the teacher has no more."""

    def describe(self) -> str:
        return type(self).__name__


class StoredAnnotator(Annotator):
    """A black-box teacher's stored rationales and synthetic examples.

    Args:
        store: a `StoredRationales` (kdlight.tasks.longtail.rationales), keyed by raw input text.
    """

    def __init__(self, store):
        self.store = store

    def annotate(self, records: Sequence[LongTailRecord], workdir: Path) -> list[Annotation]:
        annotations = []
        for record in records:
            rationale, answer = self.store.lookup(record.text)  # a KeyError names the store for a miss
            annotations.append(Annotation(split_answer_line(rationale) or rationale, answer))
        return annotations

    def synthesize(self, domain: str, n: int, used: set[str], workdir: Path, seed: int) -> list[LongTailRecord]:
        # The stored examples in a seeded order of their own, so that seeds differ and a resumed
        # run takes the same ones.
        available = list(self.store.synthetic(domain))
        random.Random(f"{seed}:{domain}").shuffle(available)
        return [r for r in available if r.id not in used][:n]

    def describe(self) -> str:
        return f"stored teacher outputs ({self.store.describe()})"


class ModelAnnotator(Annotator):
    """A local teacher model.

    Args:
        generate: `(prompts, decoding, workdir, seed) -> texts` (one list of texts per prompt):
            the teacher's decoding, journaled in `workdir` (built by the pipeline around
            `LiveTeacher.outputs`).
        prompt: the task's `format_prompt(text, hint=None)`, the format the teacher was trained on.
        parse: `(generated text) -> answer or None`, the task's answer parser.
        synthesis: a `Decoding` for writing new inputs (sampling), or None: this teacher cannot
            synthesise (a request is an error).
        max_new_tokens: the longest rationale.
    """

    def __init__(self, generate: Callable[[list[str], Decoding | None, Path, int], list[list[str]]],
                 prompt: Callable[..., str], parse: Callable[[str], str | None], synthesis: Decoding | None = None,
                 name: str = "teacher"):
        self.generate, self.prompt, self.parse, self.synthesis, self.name = generate, prompt, parse, synthesis, name

    def annotate(self, records: Sequence[LongTailRecord], workdir: Path) -> list[Annotation]:
        if not records:
            return []
        prompts = [self.prompt(r.text, hint=hint(r.answer)) for r in records]
        texts = self.generate(prompts, None, workdir / "annotations", 0)
        return [Annotation(split_answer_line(t[0]), self.parse(t[0])) for t in texts]

    def synthesize(self, domain: str, n: int, used: set[str], workdir: Path, seed: int) -> list[LongTailRecord]:
        if n <= 0:
            return []
        if self.synthesis is None:
            raise ValueError(f"teacher {self.name} cannot synthesise inputs (no synthesis decoding): use "
                             "policy.tail_fill=duplicate, or a teacher trained to write inputs (data.task.role=teacher)")
        decoding = replace(self.synthesis, num_return_sequences=n)
        texts = [t.strip() for t in self.generate([synthesis_prompt(domain)], decoding, workdir / f"synthesis_{domain}",
                                                  seed)[0]]
        inputs = [LongTailRecord(f"synthetic:{workdir.name}:{domain}:{k}", t, "", domain) for k, t in enumerate(texts)]
        inputs = [r for r in inputs if r.id not in used and r.text]
        # No gold answer for a new input: the teacher answers it without a hint (the paper does not
        # verify synthetic examples either).
        plain = [self.prompt(r.text) for r in inputs]
        outputs = self.generate(plain, None, workdir / f"synthesis_{domain}_answers", 0) if plain else []
        return [LongTailRecord(r.id, r.text, self.parse(o[0]) or "", domain, split_answer_line(o[0]),
                               {"synthetic": True}) for r, o in zip(inputs, outputs)]

    def describe(self) -> str:
        return f"local teacher {self.name}"


class LocalTeacherDecoder:
    """A saved teacher model's decoding for `ModelAnnotator`, through the core's teacher outputs
    (`LiveTeacher.outputs`: distinct prompts decoded in chunks, each chunk journaled in the work
    folder, the whole set cached there), loaded on first use only (a resumed run whose selections
    are all read back never loads it).

    Args:
        spec: the teacher model (a kdlight run's `model/`, with its tokenizer).
        max_prompt_tokens: prompts are cut as training cuts them.
        max_new_tokens: the longest rationale (annotation's greedy decoding).
        batch_size: prompts per decoding batch.
        device: where the teacher decodes (`cpu`, `cuda`).
    """

    def __init__(self, spec, max_prompt_tokens: int, max_new_tokens: int, batch_size: int = 64, device: str = "cpu"):
        self.spec, self.max_prompt_tokens, self.batch_size, self.device = spec, max_prompt_tokens, batch_size, device
        self.greedy = Decoding(max_new_tokens=max_new_tokens)
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            tokenizer = saved_tokenizer(self.spec.weights)
            if tokenizer is None:
                raise ValueError(f"teacher '{self.spec.name}': a local annotating teacher must be a saved model with "
                                 f"its tokenizer (a kdlight run's model/), got path={self.spec.path}")
            model = build_model(self.spec, tokenizer, frozen=True)
            teacher = LiveTeacher(model).to(torch.device(self.device))
            self._loaded = (teacher, tokenizer, shared_vocab_size(tokenizer, [ModelVocab("teacher", model)]))
        return self._loaded

    def __call__(self, prompts: list[str], decoding: Decoding | None, workdir: Path, seed: int) -> list[list[str]]:
        teacher, tokenizer, vocab_size = self._load()
        ids, _ = encode_prompts(tokenizer, prompts, self.max_prompt_tokens)
        items = [PromptItem(i, f"prompt{i}", text, p, False) for i, (text, p) in enumerate(zip(prompts, ids))]
        outputs = teacher.outputs(PrepareContext(items, teacher, tokenizer, vocab_size), decoding or self.greedy,
                                  batch_size=self.batch_size, cache_dir=str(workdir), seed=seed)
        return [[tokenizer.decode(s.ids, skip_special_tokens=True).strip() for s in outputs[i]] for i in range(len(items))]
