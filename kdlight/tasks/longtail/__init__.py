"""Long-tailed multi-domain data (BalDistill): MATH, R52, a multiple-choice QA mix and GSM8K, with
a stored black-box teacher's rationales; targets `<rationale>\\nThe answer is <answer>.`, scored per
domain by the parsed answer (kdlight.eval.answers)."""

from kdlight.tasks.longtail.rationales import StoredRationales
from kdlight.tasks.longtail.generated import LongTailGenSource
from kdlight.tasks.longtail.record import (
    ANSWER_PREFIX,
    LongTailRecord,
    LongTailSource,
    answer_target,
    rationale_target,
)
from kdlight.tasks.longtail.sources import Gsm8kSource, MathSource, McqaSource, R52Source, reuters_text
from kdlight.tasks.longtail.task import LongTailTask

__all__ = ["ANSWER_PREFIX", "Gsm8kSource", "LongTailGenSource", "LongTailRecord", "LongTailSource", "LongTailTask", "MathSource",
           "McqaSource", "R52Source", "StoredRationales", "answer_target", "rationale_target", "reuters_text"]
