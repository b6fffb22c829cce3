"""Natural language generation: Shakespeare, SQuAD QG, ART, XSum, E2E and generated data, scored by BLEU/ROUGE."""

from kdlight.tasks.nlg.generated import NlgGenSource
from kdlight.tasks.nlg.sources import (
    ArtSource,
    E2ESource,
    ShakespeareSource,
    SquadQGSource,
    XSumSource,
)
from kdlight.tasks.nlg.task import NlgRecord, NlgSource, NlgTask

__all__ = ["ArtSource", "E2ESource", "NlgGenSource", "NlgRecord", "NlgSource", "NlgTask", "ShakespeareSource",
           "SquadQGSource", "XSumSource"]
