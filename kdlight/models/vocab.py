"""Start-up check that teacher and student share a vocabulary (PEERS.md, user request 1).

Models of one family often differ only in padding rows of the embedding (e.g. 151936 vs 152064):
that is handled by slicing logits to the tokenizer's size. Different tokenizers are a real
mismatch and stop the run before any step, naming both tokenizers and their sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.tokenizer import describe


class VocabularyMismatch(ValueError):
    pass


@dataclass
class ModelVocab:
    """A model as the check sees it: its role, output rows, and the tokenizer saved with it."""

    role: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None = None


def shared_vocab_size(run_tokenizer: PreTrainedTokenizerBase, models: list[ModelVocab]) -> int:
    """The number of real vocabulary entries every model shares; raise on a real mismatch."""
    size = len(run_tokenizer)
    for entry in models:
        own = entry.tokenizer
        if own is not None and own.get_vocab() != run_tokenizer.get_vocab():
            raise VocabularyMismatch(
                f"{entry.role} tokenizer {describe(own)} differs from the run's tokenizer "
                f"{describe(run_tokenizer)}: teacher and student must share one vocabulary "
                "(cross-tokenizer distillation needs an alignment method, which is not configured)")
        rows = entry.model.get_output_embeddings().weight.shape[0]
        if rows < size:
            raise VocabularyMismatch(
                f"{entry.role} model has {rows} output rows but tokenizer {describe(run_tokenizer)} has {size} "
                "tokens; a model can have extra padding rows, never fewer")
    return size
