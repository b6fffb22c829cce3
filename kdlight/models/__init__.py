"""Models: build any HF causal or seq2seq LM (by path, or a named tiny size from a config)."""

from kdlight.models.build import ModelSpec, build_model, count_parameters
from kdlight.models.lm import generate, target_logits

__all__ = ["ModelSpec", "build_model", "count_parameters", "generate", "target_logits"]
