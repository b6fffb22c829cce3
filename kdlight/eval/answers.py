"""Answers read back from generated text, normalised, and scored: accuracy, or per-class F1.

Every long-tail task writes its targets as `<rationale>\\nThe answer is <answer>.`, and a teacher's
stored rationales end in similar ways ("The answer is: 104.99", "the answer is (A) sending ...",
"the appropriate topic ... would be:earn"). `parse_answer` finds the final answer of any of them
and returns it normalised, so that an answer is right when it equals the gold answer normalised
the same way (`normalize_answer`). It returns None when it finds no answer: a parse failure, which
the scorers count as wrong and report as the share not parsed (`parsed`).

Where the answer is looked for, in order:
1. What the text states as its answer: the last line of the target format's form ("The answer is
   X.", which therefore always parses); else the last `\\boxed{...}` (braces balanced, nested ones
   kept; a MATH solution's "the answer is correct" after its box does not count); else the last
   other answer cue ("answer is X", "Answer: X", "answer would be X", GSM8K's "#### X"). A box
   inside the stated line is unwrapped.
2. By kind, from that statement, or from the whole text when it holds no answer of the kind:
   - `math`: the statement, normalised; no statement is a parse failure (a MATH answer is an
     expression: guessing one from free text is noise).
   - `choice`: the letter at the statement's start ("(B)", "B", "B)"; upper case unless in
     parentheses, so that "the answer is a house" is not option A); else an option letter as the
     whole text ("B", "(B)", "B."), at its start ("(B) sending ...", "B) ..."), or as its last word.
   - `label`: a closed label set (R52's 52 topics), matched case-insensitively as whole words (a
     hyphen belongs to the word: "gas" is not found in "nat-gas"). The label at the statement's
     start, else one right after a topic statement ("topic ... is/be[:] earn", "Topic: earn"), else
     the last label in quotes ("earn", 'earn'), else the one label mentioned anywhere, when exactly
     one is; several different labels mentioned otherwise is a parse failure rather than a guess
     (R52 labels are common words: trade, gold, ship, interest, lead).
   - `number`: the first number of the statement, else the last number of the text (thousands
     commas removed).

MATH answers are normalised as the MATH paper's equivalence check does (Hendrycks et al. 2021,
`is_equiv`'s string normalisation) plus a few rules of Minerva's (Lewkowycz et al. 2022): see
`normalize_math_answer`.
"""

from __future__ import annotations

import copy
import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from kdlight.data.example import Example
from kdlight.eval.scorer import Scorer

KINDS = ("math", "choice", "label", "number")
CHOICE_LETTERS = "ABCDEFGHIJ"

# "answer is X", "Answer: X", "answer would be X", "answer is: X", and GSM8K's "#### X".
_CUE = re.compile(r"\banswer\s*(?:is|would\s+be|will\s+be|should\s+be)?\s*:\s*|\banswer\s+(?:is|would\s+be|will\s+be|"
                  r"should\s+be)\s+|####\s*", re.IGNORECASE)
# The answer line of the family's target format, "The answer is X.", as a line of its own.
_ANSWER_LINE = re.compile(r"^[ \t*]*the\s+(?:final\s+)?answer\s+is\s*:?[ \t]*(\S.*?)[ \t]*$",
                          re.IGNORECASE | re.MULTILINE)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
# "the appropriate topic ... would be "earn"", "Topic: earn": a label right after is/be/as or a colon.
_TOPIC = re.compile(r"\b(?:topic|category|label|class)\b", re.IGNORECASE)
_TOPIC_LINK = re.compile(r"\b(?:is|be|as)\b\s*:?\s*|:\s*", re.IGNORECASE)


def check_kind(kind: str, where: str = "kind") -> str:
    if kind not in KINDS:
        raise ValueError(f"{where} must be one of {KINDS}, got {kind!r}")
    return kind


# --- finding the answer ---------------------------------------------------------------------------------------


def last_boxed(text: str) -> tuple[str, int] | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) of `text` and where
    that box starts; None if there is none or its braces never close."""
    found = None
    for match in _BOX.finditer(text):
        start, rest = match.start(), match.end()
        if rest < len(text) and text[rest] == "{":
            depth = 0
            for end in range(rest, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    found = (text[rest + 1:end], start)
                    break
        elif match.group().endswith(" ") and (word := re.match(r"[^\s$]+", text[rest:])):  # "\boxed 5$"
            found = (word.group(), start)
    return found


def _after_last_cue(text: str) -> tuple[str, int] | None:
    """The rest of the line after the last answer cue, and where the cue starts."""
    matches = list(_CUE.finditer(text))
    if not matches:
        return None
    cue = matches[-1]
    rest = text[cue.end():]
    line = rest.split("\n", 1)[0]
    if not line.strip() and "\n" in rest:  # "The answer is:\n42"
        line = rest.lstrip("\n").split("\n", 1)[0]
    return line.strip(), cue.start()


def _stated(text: str) -> str | None:
    """What the text states as its final answer, raw: the last line in the target format's form
    ("The answer is X."), else the last box, else the last other answer cue."""
    lines = list(_ANSWER_LINE.finditer(text))
    if lines:
        line = lines[-1].group(1)
        inner = last_boxed(line)
        return inner[0] if inner is not None else line
    box, cue = last_boxed(text), _after_last_cue(text)
    if box is not None:
        return box[0]
    if cue is not None:
        inner = last_boxed(cue[0])
        return inner[0] if inner is not None else cue[0]
    return None


def _strip_line(answer: str) -> str:
    """An answer line's text without its wrapping: `$...$`, bold marks, the sentence's final period."""
    answer = answer.strip().strip("*").strip()
    if answer.startswith("$") and answer.count("$") >= 2:
        answer = answer[1:answer.index("$", 1)]
    return answer.strip().rstrip(".").strip("$ ")


def parse_answer(text: str, kind: str, labels: Sequence[str] | None = None) -> str | None:
    """The final answer of a generated `text`, normalised (`normalize_answer`); None if none is found.

    `labels`: the closed label set of a `label` task (required there); for `choice`, the allowed
    option letters (default A-J).
    """
    check_kind(kind)
    if kind == "label" and not labels:
        raise ValueError("parse_answer(kind='label') needs the label set (labels=...)")
    stated = _stated(text)
    if kind == "math":
        return None if stated is None else normalize_math_answer(_strip_line(stated))
    if kind == "number":
        if stated is not None and (answer := _first_number(stated)) is not None:
            return answer
        numbers = _NUMBER.findall(text)
        return normalize_number(numbers[-1]) if numbers else None
    if kind == "choice":
        letters = "".join(labels) if labels else CHOICE_LETTERS
        if stated is not None and (letter := _cued_letter(stated, letters)) is not None:
            return letter
        return _bare_letter(text, letters)
    return _label(text, stated, list(labels or ()))


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return normalize_number(match.group()) if match else None


def _cued_letter(answer: str, letters: str) -> str | None:
    """The option letter at the start of what follows a cue: "(B)", "B", "B)", "B." or "(b)"."""
    answer = answer.strip().lstrip("*:\"' ")
    if match := re.match(rf"\(\s*([{letters}{letters.lower()}])\s*\)", answer):
        return match.group(1).upper()
    match = re.match(rf"(?:option|choice)?\s*([{letters}])(?![A-Za-z0-9])", answer, re.IGNORECASE)
    return match.group(1) if match and match.group(1).isupper() else None


def _bare_letter(text: str, letters: str) -> str | None:
    """An option letter as the whole text, at its start ("(B) ...", "B) ...") or as its last word."""
    stripped = text.strip().strip("*").strip()
    if match := re.fullmatch(rf"\(?([{letters}])\)?\.?", stripped):
        return match.group(1)
    if match := re.match(rf"\(([{letters}])\)|([{letters}])\)", stripped):
        return match.group(1) or match.group(2)
    if match := re.search(rf"(?:^|\s)\(?([{letters}])\)?\.?$", stripped):
        return match.group(1)
    return None


@functools.lru_cache(maxsize=16)
def _label_pattern(labels: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, and a hyphen is part of a word: "nat-gas" is one label, never "gas".
    names = sorted(labels, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?![\w-])", re.IGNORECASE)


def _label(text: str, stated: str | None, labels: list[str]) -> str | None:
    canonical = {label.lower(): label for label in labels}
    pattern = _label_pattern(tuple(labels))

    def at_start(fragment: str) -> str | None:
        match = pattern.match(fragment.strip().lstrip("\"'“‘*:( ").strip())
        return canonical[match.group(1).lower()] if match else None

    if stated is not None and (label := at_start(stated)) is not None:
        return label
    for topic in reversed(list(_TOPIC.finditer(text))):  # the last topic statement that names a label
        sentence = re.split(r"\.\s|\n", text[topic.end():topic.end() + 200], maxsplit=1)[0]
        for link in _TOPIC_LINK.finditer(sentence):
            if (label := at_start(sentence[link.end():])) is not None:
                return label
    quoted = [m.group(1) for m in re.finditer(r"[\"'“‘]\s*([\w-]+)\s*[,.;:]?\s*[\"'”’]", text)
              if m.group(1).lower() in canonical]
    if quoted:
        return canonical[quoted[-1].lower()]
    mentioned = {canonical[m.group(1).lower()] for m in pattern.finditer(text)}
    return mentioned.pop() if len(mentioned) == 1 else None


# --- normalising answers ----------------------------------------------------------------------------------------


def normalize_answer(answer: str | None, kind: str, labels: Sequence[str] | None = None) -> str | None:
    """A gold or stored answer in the form parsed answers take; None when it is not an answer of
    `kind` (an empty string, a label outside the set, a non-number)."""
    check_kind(kind)
    if answer is None or not str(answer).strip():
        return None
    answer = str(answer).strip()
    if kind == "math":
        return normalize_math_answer(answer) or None
    if kind == "number":
        return normalize_number(answer)
    if kind == "choice":
        letters = "".join(labels) if labels else CHOICE_LETTERS
        match = re.fullmatch(rf"\(?\s*([{letters}{letters.lower()}])\s*\)?\.?", answer)
        return match.group(1).upper() if match else None
    if not labels:
        raise ValueError("normalize_answer(kind='label') needs the label set (labels=...)")
    canonical = {label.lower(): label for label in labels}
    return canonical.get(answer.strip("\"'“”‘’*.,;: ").lower())


def normalize_number(text: str) -> str | None:
    """A number as canonical text: "1,080" -> "1080", "$5.50" -> "5.5", "72.0" -> "72", "-.5" ->
    "-0.5"; None if `text` is not one number."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".").removesuffix("%")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _fix_fracs(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`, `\\frac{a}b` unchanged."""
    head, *parts = text.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if not part or part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return text
        a, b, rest = part[0], part[1], part[2:]
        out += f"{{{a}}}{{{b}}}{rest}" if b != "{" else f"{{{a}}}{b}{rest}"
    return out


def _fix_a_slash_b(text: str) -> str:
    """`3/4` -> `\\frac{3}{4}` (integers only, as MATH writes every fraction with `\\frac`)."""
    match = re.fullmatch(r"(-?\d+)/(\d+)", text)
    return f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}" if match else text


def _fix_sqrt(text: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}` (`\\sqrt[3]{x}` and `\\sqrt{x}` unchanged)."""
    return re.sub(r"\\sqrt(?=[A-Za-z0-9])([A-Za-z0-9])", r"\\sqrt{\1}", text)


def normalize_math_answer(answer: str) -> str:
    """A MATH answer as the MATH equivalence check compares it (idempotent: normalising twice
    changes nothing more).

    Hendrycks et al.'s rules: line breaks, `\\!` and spaces removed; `\\\\` -> `\\`; `\\dfrac`,
    `\\tfrac` -> `\\frac`; `\\left`, `\\right` removed; degrees (`^\\circ`, `^{\\circ}`), `\\$` and
    `\\%` removed; units written `\\text{ cm}` removed; `.5` -> `0.5`; a short left-hand side
    dropped (`x = 5` -> `5`); `\\sqrt3` -> `\\sqrt{3}`; `\\frac12` -> `\\frac{1}{2}`; `0.5` ->
    `\\frac{1}{2}`; `3/4` -> `\\frac{3}{4}`. Added from Minerva: `\\text{X}`, `\\textbf{X}`,
    `\\mbox{X}` -> `X`; surrounding `$`, a final period and thousands commas (`1,657`) removed; and
    here: trailing zeros of a decimal (`5.50` -> `5.5`, `2.0` -> `2`). The rules are applied until
    nothing changes, since one can expose another (`\\text {cm}` loses its space first).
    """
    text = answer
    for _ in range(8):
        again = _normalize_math_once(text)
        if again == text:
            break
        text = again
    return text


def _normalize_math_once(answer: str) -> str:
    text = answer.strip()
    if text.startswith("$") and text.endswith("$") and len(text) > 1:
        text = text.strip("$")
    text = text.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    text = text.replace("\\$", "").replace("$", "")
    text = re.sub(r"\\(text|textbf|mbox|mathrm)\s+\{", r"\\\1{", text)  # "\text {" is "\text{"
    if "\\text{ " in text:  # MATH writes units as "\text{ cm}" after the value
        text = text.split("\\text{ ")[0]
    text = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\%", "").replace("%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    text = text.strip().rstrip(".").strip()
    if text.startswith("."):
        text = "0" + text
    if text.count("=") == 1 and len(text.split("=")[0].strip()) <= 2:
        text = text.split("=")[1]
    text = text.replace(" ", "")
    text = _fix_sqrt(text)
    text = _fix_fracs(text)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", text):
        text = text.rstrip("0").rstrip(".")
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)


# --- scorers -----------------------------------------------------------------------------------------------------


def gold_answer(example: Example, kind: str, labels: Sequence[str] | None) -> str | None:
    """The example's gold answer, normalised: `meta["answer"]`, else the answer of its target."""
    answer = example.meta.get("answer")
    if answer is not None:
        return normalize_answer(str(answer), kind, labels)
    return None if example.target is None else parse_answer(example.target, kind, labels)


class AnswerAccuracyScorer(Scorer):
    """`acc`: the share of predictions whose parsed answer equals the gold answer (both normalised);
    `parsed`: the share from which an answer could be parsed at all. A parse failure is wrong.

    Per domain (`acc/<domain>`, `parsed/<domain>`, `n/<domain>`) with the macro average over
    domains (`acc_macro`, the long-tail headline: a tail domain weighs as much as a head domain) and
    the micro average (`acc_micro` = `acc`, over all examples).

    Args:
        kind: how answers are parsed and compared (`math`, `choice`, `label`, `number`).
        labels: the label set of a `label` task; for `choice`, the allowed letters (default A-J).
        group_by: `group` (the example's domain), a `meta` key, or None.
    """

    per_example = ("acc", "parsed")
    table_metrics = ("acc",)

    def __init__(self, kind: str, labels: Sequence[str] | None = None, group_by: str | None = "group"):
        self.kind = check_kind(kind, "data.task.scorer.kind")
        self._labels = None if labels is None else list(labels)
        self._find_labels: Callable[[], Sequence[str] | None] | None = None
        self.group_by = group_by

    @property
    def labels(self) -> list[str] | None:
        if self._labels is None and self._find_labels is not None:
            found = self._find_labels()
            self._labels = None if found is None else list(found)
        return self._labels

    def with_labels(self, find: Callable[[], Sequence[str] | None]) -> AnswerAccuracyScorer:
        """This scorer with the task's label set where none was given, read when first needed (so
        that building the task reads no file)."""
        if self._labels is not None:
            return self
        scorer = copy.copy(self)
        scorer._find_labels = find
        return scorer

    def check(self, examples: Sequence[Example], name: str) -> list[str]:
        if self.kind == "label" and not self.labels:
            raise ValueError(f"{type(self).__name__}(kind='label') has no label set (data.task.scorer.labels)")
        if missing := [e.id for e in examples if gold_answer(e, self.kind, self.labels) is None]:
            raise ValueError(f"{len(missing)} examples have no gold {self.kind} answer (first: {missing[0]}); every "
                             "example needs meta['answer'] or a target ending in 'The answer is <answer>.'")
        return []

    def score_examples(self, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
        records = []
        for example, prediction in zip(examples, predictions):
            gold = gold_answer(example, self.kind, self.labels)
            parsed = parse_answer(prediction, self.kind, self.labels)
            records.append({"prediction": prediction, "answer": parsed, "gold": gold, "parsed": parsed is not None,
                            "acc": parsed is not None and parsed == gold})
        return records

    def settings(self) -> dict[str, Any]:
        return {"scorer": "answer_accuracy", "kind": self.kind, "labels": self.labels,
                "parse_failure": "wrong (acc 0), counted in 'parsed'"}


class LabelF1Scorer(AnswerAccuracyScorer):
    """Classification into a closed label set (R52): per-class F1 and its averages, and accuracy.

    Metrics (a parse failure predicts no class: a false negative of the gold class, a false
    positive of none):
        f1/<label>   F1 of one class present in the gold set (its precision counts the examples of
                     other classes predicted as it).
        f1           macro F1, the headline: the mean of `f1/<label>` over the classes present in
                     the gold set (a class that is only ever predicted, never gold, has no F1 of
                     its own; its false positives still cost the classes of the examples it took).
        f1_macro     the same value, named as other macro averages are.
        f1_micro     F1 over all decisions: micro precision TP / predictions made, micro recall
                     TP / examples; it equals accuracy when every prediction parses.
        acc, acc/<group>, acc_macro, acc_micro, parsed...: as `AnswerAccuracyScorer` (with the gold
                     label as group, acc/<label> is the class's recall, acc_macro balanced accuracy).

    Table: `acc` first (the paired significance test compares per-example outcomes, which F1 does
    not have), then `f1`.

    Args:
        labels: the label set; None: the task's (`LongTailTask` fills it in).
        group_by: `group` (the example's domain), a `meta` key, or None.
    """

    table_metrics = ("acc", "f1")

    def __init__(self, labels: Sequence[str] | None = None, group_by: str | None = "group"):
        super().__init__("label", labels, group_by)

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        metrics = super().aggregate(records)
        gold = Counter(r["gold"] for r in records)
        predicted = Counter(r["answer"] for r in records if r["answer"] is not None)
        right = Counter(r["gold"] for r in records if r["acc"])
        per_class = {}
        for label in sorted(gold):
            precision = right[label] / predicted[label] if predicted[label] else 0.0
            recall = right[label] / gold[label]
            per_class[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        for label, f1 in per_class.items():
            metrics[f"f1/{label.replace('/', '_')}"] = 100.0 * f1
        macro = 100.0 * sum(per_class.values()) / len(per_class) if per_class else 0.0
        made, tp = sum(predicted.values()), sum(right.values())
        precision, recall = (tp / made if made else 0.0), (tp / len(records) if records else 0.0)
        micro = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return metrics | {"f1": macro, "f1_macro": macro, "f1_micro": 100.0 * micro}

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"scorer": "label_f1", "f1": "macro over the classes present in the gold set",
                                     "parse_failure": "wrong (acc 0), a false negative of its gold class"}
