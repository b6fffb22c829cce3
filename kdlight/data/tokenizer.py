"""Tokenizers: an HF tokenizer by path, or a byte-level BPE trained on the training text.

The trained tokenizer is saved with the run (and with every saved model), so a later run that
starts from that model gets the same vocabulary. Byte-level BPE round-trips any text exactly,
which matters for SQL: decoding must give back the query the model wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

MASK_TOKEN = "<mask>"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "mask_token": MASK_TOKEN}


@dataclass(frozen=True)
class TokenizerSpec:
    """Where the tokenizer comes from.

    Attributes:
        path: an HF tokenizer folder or name; None trains one on the training text.
        vocab_size: size of a trained tokenizer (ignored with `path`).
        split_digits: a trained tokenizer gives each digit its own token (as Llama's does).
    """

    path: str | None = None
    vocab_size: int = 1024
    split_digits: bool = True


def train_tokenizer(texts: Iterable[str], vocab_size: int, split_digits: bool = True,
                    mask_token: bool = True) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with kdlight's special tokens (ids 0-4) on `texts`. `mask_token=False`
    leaves the mask token out, as many pretrained tokenizers do."""
    special = SPECIAL_TOKENS if mask_token else {k: v for k, v in SPECIAL_TOKENS.items() if k != "mask_token"}
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Split digits: copying a number digit by digit generalises to unseen numbers, where merged
    # multi-digit tokens do not; without it, frequent numbers become single tokens.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in an HF folder (or hub name), or the one inside a `.gguf` file."""
    path = Path(path)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:  # many causal LMs ship without one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_tokenizer(path: str | Path | None) -> bool:
    """Whether `path` (a model folder or a `.gguf` file, which always holds its tokenizer) has one."""
    if path is None:
        return False
    path = Path(path)
    return path.is_file() if path.suffix == ".gguf" else (path / "tokenizer_config.json").exists()



def saved_tokenizer(path: str | Path | None) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model at `path`, or None (a random-init model has none)."""
    return load_tokenizer(path) if has_tokenizer(path) else None

def describe(tokenizer: PreTrainedTokenizerBase) -> str:
    return f"{tokenizer.name_or_path or type(tokenizer).__name__} ({len(tokenizer)} tokens)"


def resolve_tokenizer(spec: TokenizerSpec, model_paths: Sequence[str | None], training_texts: Iterable[str],
                      save_dir: Path) -> PreTrainedTokenizerBase:
    """An explicit tokenizer path; else the one saved with a model we start from (in the order
    given); else a byte-level BPE trained on the training text and saved to `save_dir`."""
    if spec.path is not None:
        return load_tokenizer(spec.path)
    for path in model_paths:
        if has_tokenizer(path):
            log.info(f"using the tokenizer saved with the model at {path}")
            return load_tokenizer(path)
    log.info(f"training a byte-level BPE tokenizer ({spec.vocab_size} tokens) on the training text")
    tokenizer = train_tokenizer(training_texts, spec.vocab_size, spec.split_digits)
    tokenizer.save_pretrained(save_dir)
    return load_tokenizer(save_dir)  # reload so name_or_path points at the saved copy
