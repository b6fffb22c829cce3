"""Long-tailed multi-domain data as a task: one input text in, a rationale and an answer out.

The setting of BalDistill (Zhou et al., Findings of EMNLP 2024): a training pool whose domains
(subjects, topics, source data sets) are very unequal in size, from which a budgeted selection
picks the examples a teacher annotates; the student is scored per domain, and the macro average
over domains is the headline. `LongTailTask` serves a source's pool as training examples whose
target is the gold answer line alone (`The answer is <answer>.`, the fine-tune-on-gold baseline;
selection pipelines replace the targets with teacher rationales, built from `records`), and its
test split as the evaluation set, scored by parsing the answer out of each generation.
"""

from __future__ import annotations

from kdlight.data.example import Example
from kdlight.eval.answers import KINDS, AnswerAccuracyScorer, LabelF1Scorer
from kdlight.eval.scorer import Scorer
from kdlight.tasks.base import Task, check_prompt, check_unique_ids
from kdlight.tasks.longtail.record import LongTailRecord, LongTailSource, answer_target
from kdlight.tasks.longtail.teacher import teacher_examples
from kdlight.tasks.nlg.sources import first_words


ROLES = ("student", "teacher")


class LongTailTask(Task):
    """A long-tail source's pool (`train`) and test split (`eval`) as examples, grouped by domain.

    Each example: prompt = the template around the (cut) raw text; target = `The answer is
    <answer>.`; group = the domain; meta = `text` (the raw text, uncut: stored teacher outputs are
    keyed by it), `answer` (normalised gold), `kind`, the record's own meta, and `rationale` (the
    gold rationale, where the data has one). There are no unlabeled inputs.

    Args:
        source: the data (`MathSource`, `R52Source`, `McqaSource`, `Gsm8kSource`, ...).
        prompt: the model input; `{text}` is replaced by the raw text. Decoder-only models need a
            cue where the output starts (e.g. `"{text}\\nAnswer:"`).
        max_text_words: keep the first N words of the text inside the prompt (R52's news bodies are
            long and their title comes first; the data module would otherwise cut an over-long
            prompt at its start, losing the title); None: no cut.
        eval_split: the source's split the run is scored on (`test`).
        scorer: how predictions are scored; None: by the source's kind, `LabelF1Scorer` over its
            labels for `label`, else `AnswerAccuracyScorer`. A scorer given without labels gets
            the source's.
        role: `student` (the pool as training examples) or `teacher` (a local teacher's
            fine-tuning data from the gold rationales of `teacher_split`: annotating with a hint,
            answering, writing new inputs per domain; kdlight.tasks.longtail.teacher).
        teacher_split: the source split with gold rationales a teacher trains on (`teacher` for
            the generated data; `train` for MATH's or GSM8K's own solutions).
    """

    def __init__(self, source: LongTailSource, prompt: str = "{text}\nAnswer:", max_text_words: int | None = None,
                 eval_split: str = "test", scorer: Scorer | None = None, role: str = "student",
                 teacher_split: str = "teacher"):
        check_prompt(prompt, "text")
        if max_text_words is not None and max_text_words < 1:
            raise ValueError(f"data.task.max_text_words must be null (no cut) or >= 1, got {max_text_words}")
        if eval_split == "train":
            raise ValueError("data.task.eval_split is 'train': the run would be scored on its training pool")
        if getattr(source, "kind", None) not in KINDS:
            raise ValueError(f"{source.describe()}: kind {getattr(source, 'kind', None)!r} is not one of {KINDS}")
        if isinstance(scorer, AnswerAccuracyScorer) and scorer.kind != source.kind:
            raise ValueError(f"data.task.scorer parses '{scorer.kind}' answers but {source.describe()} has "
                             f"'{source.kind}' answers")
        if role not in ROLES:
            raise ValueError(f"data.task.role must be one of {ROLES}, got '{role}'")
        self.source, self.prompt, self.max_text_words, self.eval_split = source, prompt, max_text_words, eval_split
        self.role, self.teacher_split = role, teacher_split
        self._given_scorer, self._scorer = scorer, None
        self._splits: dict[str, list[LongTailRecord]] | None = None

    @property
    def kind(self) -> str:
        return self.source.kind

    def records(self, split: str) -> list[LongTailRecord]:
        """The source's records of `split` (`train`: the pool, `test`, `teacher` where it has one)."""
        splits = self._read()
        if split not in splits:
            raise ValueError(f"{self.source.describe()} has no split '{split}'; it has {sorted(splits)}")
        return list(splits[split])

    def _read(self) -> dict[str, list[LongTailRecord]]:
        if self._splits is None:
            splits = self.source.splits()
            check_unique_ids(splits, self.source.describe())
            self._splits = splits
        return self._splits

    def load(self, split: str) -> list[Example]:
        self.check_split(split)
        if split == "unlabeled":
            return []
        if split == "eval" and self.eval_split not in self._read():
            raise ValueError(f"{self.source.describe()} has no split '{self.eval_split}' (data.task.eval_split); it "
                             f"has {sorted(self._read())}")
        if split == "train" and self.role == "teacher":
            return teacher_examples(self.records(self.teacher_split), self.format_prompt,
                                    where=f"{self.source.describe()}, split '{self.teacher_split}' (data.task.teacher_split)")
        return [self.example(r) for r in self.records("train" if split == "train" else self.eval_split)]

    def cut(self, text: str) -> str:
        """The raw text as the prompt shows it (its first `max_text_words` words)."""
        return first_words(text, self.max_text_words)

    def format_prompt(self, text: str, hint: str | None = None) -> str:
        """The prompt of a raw text: the template around the cut text (and a line after it, e.g. a
        teacher's hint, which the cut never removes)."""
        return self.prompt.format(text=self.cut(text) + (f"\n{hint}" if hint else ""))

    def example(self, record: LongTailRecord, target: str | None = None) -> Example:
        """`record` as an example; `target`: another target than the gold answer line (a rationale)."""
        meta = {"text": record.text, "answer": record.answer, "kind": self.kind, **record.meta}
        if record.rationale is not None:
            meta["rationale"] = record.rationale
        target = target or answer_target(record.answer)
        return Example(record.id, self.format_prompt(record.text), target, record.domain, meta)

    def scorer(self) -> Scorer:
        if self._scorer is None:
            scorer = self._given_scorer
            if scorer is None:
                scorer = LabelF1Scorer() if self.kind == "label" else AnswerAccuracyScorer(self.kind)
            if isinstance(scorer, AnswerAccuracyScorer):
                scorer = scorer.with_labels(self.source.labels)  # read when scoring starts, not here
            self._scorer = scorer
        return self._scorer

    def describe(self) -> str:
        cut = f", text cut to {self.max_text_words} words" if self.max_text_words else ""
        return f"long-tail {self.kind}: {self.source.describe()}, eval '{self.eval_split}'{cut}"
