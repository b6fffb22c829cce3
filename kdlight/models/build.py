"""Build a language model from a `ModelSpec`: pretrained weights by path, or a random-init size.

Named sizes (conf/model/*.yaml) are HF configs with random weights, so everything runs offline;
`path` loads any `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` checkpoint, including a model
that an earlier kdlight run saved (the warm start used before distillation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                          PreTrainedModel, PreTrainedTokenizerBase)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its weights come from.

    Attributes:
        name: label used in tables and run names (e.g. `llama-s`).
        family: HF `model_type` for a random-init build (`llama`, `t5`, `gpt2`, ...).
        config: HF config fields for the random-init build (sizes, dropout).
        path: an HF model folder or name; when set, weights load with `from_pretrained` and
            `family`/`config` are ignored. A kdlight run saves its trained model at `<run>/model`.
        pad_vocab_multiple: round the embedding rows up to a multiple of this, as real model
            families do (the extra rows are padding; teacher and student may differ in them).
        dtype: parameter dtype (`float32`, `bfloat16`).
    """

    name: str
    family: str | None = None
    config: dict = field(default_factory=dict)
    path: str | None = None
    pad_vocab_multiple: int = 1
    dtype: str = "float32"


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    dtype = getattr(torch, spec.dtype)
    if spec.path is not None:
        model = _from_pretrained(spec.path, dtype)
    elif spec.family is not None:
        model = _from_config(spec, tokenizer, dtype)
    else:
        raise ValueError(f"model '{spec.name}': set either `path` (pretrained) or `family` (random init)")
    _set_generation_ids(model, tokenizer)
    return model


def _from_pretrained(path: str, dtype: torch.dtype) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    log.info(f"loading {auto.__name__} from {path}")
    return auto.from_pretrained(path, dtype=dtype)


def _from_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> PreTrainedModel:
    if spec.family not in CONFIG_MAPPING:
        raise ValueError(f"model '{spec.name}': unknown family '{spec.family}' (an HF model_type, e.g. llama, t5)")
    multiple = spec.pad_vocab_multiple
    vocab = -(-len(tokenizer) // multiple) * multiple
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    config = CONFIG_MAPPING[spec.family](vocab_size=vocab, **ids, **spec.config)
    if config.is_encoder_decoder:
        config.decoder_start_token_id = tokenizer.pad_token_id
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_config(config, dtype=dtype)


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.do_sample = False  # evaluation decodes greedily unless a caller asks otherwise


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Save weights and tokenizer together, so `ModelSpec(path=folder)` restores both."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
