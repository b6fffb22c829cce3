"""Gold sequences: teacher-force on the dataset's own targets.

The source behind `sft` (CE only), word-level KD `fkd` (Hinton et al., 2015; KID Table 1) and
token-level `rkd` (KID Table 1), and the gold-sequence DistiLLM losses.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlight.data.batch import Batch
from kdlight.methods.base import SequenceSource, StepContext


@dataclass
class GoldSequences(SequenceSource):
    @property
    def fixed_sequences(self) -> bool:
        return True

    @property
    def aligned_with_gold(self) -> bool:
        return True

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        return gold
