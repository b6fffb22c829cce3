"""How a local teacher is asked to annotate and to synthesise, and the data that teaches it to.

BalDistill's teacher (GPT-4 in the paper) does two jobs: it writes a rationale for an input given
its gold answer, and it writes new inputs for a domain whose pool ran out. A long-tail task with
`role: teacher` turns its data's gold rationales (the source's `teacher` split) into training
examples for both jobs, so `kdlight-train stage=teacher data=ltgen data.task.role=teacher` gives a
teacher that budgeted distillation can use (`kdlight.selection.annotators.ModelAnnotator`):

    prompt(text, hint="Hint: The answer is a.")  ->  <rationale>\\nThe answer is a.   (annotate)
    prompt(text)                                 ->  <rationale>\\nThe answer is a.   (answer a new input)
    Write a new <domain> problem:                ->  <text>                          (synthesise)

where prompt() is the task's own prompt template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kdlight.data.example import Example
from kdlight.tasks.longtail.record import LongTailRecord, answer_target, rationale_target


def hint(answer: str) -> str:
    """The line after the input that gives the teacher the gold answer to write a rationale for."""
    return f"Hint: {answer_target(answer)}"


def synthesis_prompt(domain: str) -> str:
    """How a local teacher is asked for a new input of `domain`."""
    return f"Write a new {domain} problem:"


def teacher_examples(records: Sequence[LongTailRecord], prompt: Callable[..., str], synthesis: bool = True,
                     where: str = "the teacher split") -> list[Example]:
    """The three formats above for every record with a gold rationale (`prompt(text, hint=None)`:
    the task's prompt of a raw text)."""
    if missing := [r.id for r in records if not r.rationale]:
        raise ValueError(f"{where}: {len(missing)} of {len(records)} records have no gold rationale (first: "
                         f"{missing[0]}); a teacher learns to write rationales from them")
    examples = []
    for r in records:
        target = rationale_target(r.rationale, r.answer)
        meta = {"text": r.text, "answer": r.answer}
        examples.append(Example(f"{r.id}:hint", prompt(r.text, hint=hint(r.answer)), target, r.domain, meta))
        examples.append(Example(f"{r.id}:plain", prompt(r.text), target, r.domain, meta))
        if synthesis:
            examples.append(Example(f"{r.id}:write", synthesis_prompt(r.domain), r.text, r.domain, meta))
    return examples
