"""Distillation methods: each is a sequence source x divergence x auxiliary CE (docs/methods.md)."""

from kdlight.methods.base import Method, SequenceSource, StepContext
from kdlight.methods.gold import GoldSequences

__all__ = ["GoldSequences", "Method", "SequenceSource", "StepContext"]
