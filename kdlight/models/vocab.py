"""Start-up check that teacher and student share a vocabulary (docs/methods.md, "Vocabularies").

Models of one family often differ only in padding rows of the embedding (e.g. 151936 vs 152064):
that is handled by slicing logits to the tokenizer's size. Different tokenizers are a real
mismatch and stop the run before any step, naming both tokenizers and their sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdlight.data.tokenizer import MASK_TOKEN, describe


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
        if own is not None and _without_added_mask(own) != _without_added_mask(run_tokenizer):
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


def _without_added_mask(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The vocabulary, less a mask token kdlight appended (`add_mask_token`): a model saved by a KID
    run carries it, while the teacher it was distilled from does not."""
    vocab = tokenizer.get_vocab()
    if vocab.get(MASK_TOKEN) == len(vocab) - 1:
        vocab = {k: v for k, v in vocab.items() if k != MASK_TOKEN}
    return vocab


def add_mask_token(tokenizer: PreTrainedTokenizerBase, models: list[PreTrainedModel]) -> bool:
    """Give a tokenizer without a mask token a dedicated one (KID masks targets with it), appended
    as the last id; a model with no embedding row for it gets one (HF initialises new rows to the
    mean embedding). Returns whether anything was added."""
    if tokenizer.mask_token_id is not None:
        return False
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    for model in models:
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    return True
