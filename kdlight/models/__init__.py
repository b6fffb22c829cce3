"""Models: build any HF causal or seq2seq LM (by path, or a named tiny size from a config), read
its logits at target positions, decode with it."""

from kdlight.models.build import ModelSpec, build_model, count_parameters
from kdlight.models.decoding import Decoding, generate
from kdlight.models.lm import target_logits

__all__ = ["Decoding", "ModelSpec", "build_model", "count_parameters", "generate", "target_logits"]
