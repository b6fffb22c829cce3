"""Decoding: one typed setting for evaluation and every generator (teacher outputs, student
samples, pseudo-targets), and the one batched decoder that applies it.

Every decoding choice is passed to Hugging Face `generate` explicitly, and the model's own
`generation_config` (which a pretrained checkpoint may fill with `top_k`, `repetition_penalty`,
`no_repeat_ngram_size`, forced tokens, ...) is set aside for the call, so neither a checkpoint's
settings nor a library default leaks in. The leak this guards against was real: `transformers`
fills an unset `top_k` with 50, so "sampling from the student" silently sampled from its top 50
tokens only, while GKD and ImitKD sample from the full distribution (`top_k: 0` here).

Greedy decoding and full-distribution sampling of float32 Llama / Qwen2 models on a CPU (the
students of on-policy methods) run `kdlight.models.fast_decode` instead: HF's greedy outputs on a
preallocated KV cache, without `generate`'s per-step overhead; `hf_generate` is the reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel

from kdlight.data.batch import Batch
from kdlight.models.fast_decode import fast_generate, unsupported_reason

STRATEGIES = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class Decoding:
    """How to decode continuations.

    Attributes:
        strategy: `greedy`, `beam` (beam search) or `sample` (ancestral sampling).
        num_beams: beams for `beam` (at least 2); 1 otherwise.
        temperature: softmax temperature for `sample`.
        top_p: nucleus threshold for `sample` (1.0: no nucleus cut).
        top_k: keep only the k most likely tokens for `sample` (0: the full vocabulary).
        num_return_sequences: continuations per prompt (`beam`: the best ones, at most
            `num_beams`; `sample`: independent draws).
        max_new_tokens: longest continuation, EOS included.
        length_penalty: beam search's exponent on the length when ranking finished beams
            (1.0: the mean log-probability per token, as Hugging Face ranks them).
        compile: run the fast decoder's step (`kdlight.models.fast_decode`) through
            `torch.compile`: a one-time compilation of tens of seconds per process and model, then
            faster steps; for long on-policy runs. No effect where HF `generate` decodes; not part
            of `key()` (the outputs are the same).
    """

    strategy: str = "greedy"
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1
    max_new_tokens: int = 128
    length_penalty: float = 1.0
    compile: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decoding strategy must be one of {STRATEGIES}, got '{self.strategy}'")
        if self.strategy == "beam" and self.num_beams < 2:
            raise ValueError(f"beam search needs num_beams >= 2, got {self.num_beams} (use strategy=greedy)")
        if self.strategy != "beam" and self.num_beams != 1:
            raise ValueError(f"num_beams={self.num_beams} only goes with strategy=beam, not '{self.strategy}'")
        if self.strategy == "greedy" and self.num_return_sequences != 1:
            raise ValueError("greedy decoding returns one sequence per prompt; use beam or sample for more")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams "
                             f"({self.num_beams})")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0; got "
                             f"{self.temperature}, {self.top_p}, {self.top_k}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"decoding compile must be true or false, got {self.compile!r}")
        if self.max_new_tokens < 1 or self.num_return_sequences < 1:
            raise ValueError("max_new_tokens and num_return_sequences must be at least 1")

    def key(self) -> dict:
        """The settings that determine the output (for cache keys): sampling settings only when
        sampling, beam settings only for beam search."""
        key = {"strategy": self.strategy, "max_new_tokens": self.max_new_tokens,
               "num_return_sequences": self.num_return_sequences}
        if self.strategy == "beam":
            key |= {"num_beams": self.num_beams, "length_penalty": self.length_penalty}
        if self.strategy == "sample":
            key |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return key


def generation_config(decoding: Decoding, eos_id: int, pad_id: int, suppress: list[int] | None = None,
                      decoder_start_id: int | None = None) -> GenerationConfig:
    """A complete `GenerationConfig` for `decoding`: every field that changes the output is set
    (fields left None have no effect once the model's own settings are set aside)."""
    sample = decoding.strategy == "sample"
    return GenerationConfig(
        do_sample=sample,
        num_beams=decoding.num_beams,
        num_return_sequences=decoding.num_return_sequences,
        max_new_tokens=decoding.max_new_tokens,
        min_new_tokens=0,
        # Sampling settings only when sampling: given to greedy or beam search they change nothing
        # but make transformers warn.
        temperature=decoding.temperature if sample else None,
        top_p=decoding.top_p if sample else None,
        top_k=decoding.top_k if sample else None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        length_penalty=decoding.length_penalty,
        early_stopping=False,
        renormalize_logits=False,
        suppress_tokens=suppress or None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        decoder_start_token_id=decoder_start_id,
        use_cache=True,
    )


@contextlib.contextmanager
def _own_generation_config(model: PreTrainedModel) -> Iterator[None]:
    """Set the model's stored generation settings aside (HF fills unset fields from them)."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def _fast_path(model: PreTrainedModel, decoding: Decoding, synced: bool) -> bool:
    return not synced and unsupported_reason(model, decoding.strategy, decoding.top_k, decoding.top_p) is None


def sampler(model: PreTrainedModel, decoding: Decoding, synced: bool = False) -> str | None:
    """Which sampler `generate` draws `decoding`'s samples with (None when it does not sample): the
    two give the same distribution but not the same draws under one seed, so caches of sampled
    outputs keep it in their key."""
    if decoding.strategy != "sample":
        return None
    return "inverse_transform" if _fast_path(model, decoding, synced) else "hf_multinomial"


@torch.no_grad()
def generate(model: PreTrainedModel, batch: Batch, decoding: Decoding, eos_id: int, pad_id: int, vocab_size: int,
             synced: bool = False) -> list[list[int]]:
    """Decode `decoding.num_return_sequences` continuations per prompt, batched, with the KV cache.

    Returns B x num_return_sequences token lists, prompt-major (all of prompt 0's, then prompt
    1's, ...), each cut after its first EOS (kept). Token ids at or above `vocab_size` (padding
    rows of the embedding) are never produced. `synced`: keep stepping until every rank is done,
    which a model sharded across ranks needs (its forward is collective). Works for causal LMs
    (left-padded prompts) and seq2seq LMs (prompt to the encoder).

    Greedy decoding and full-distribution sampling with the models `kdlight.models.fast_decode`
    supports (float32 Llama / Qwen2 on a CPU) run its static-cache decoder, which gives HF's greedy
    outputs faster; everything else, and every sharded (`synced`) model, runs HF `generate`.
    """
    if not _fast_path(model, decoding, synced):
        return hf_generate(model, batch, decoding, eos_id, pad_id, vocab_size, synced)
    n = decoding.num_return_sequences  # prompt-major, as HF expands them
    new = fast_generate(model, batch.prompt_ids.repeat_interleave(n, dim=0), batch.prompt_mask.repeat_interleave(n, dim=0),
                        decoding.max_new_tokens, eos_id, pad_id, vocab_size, sample=decoding.strategy == "sample",
                        temperature=decoding.temperature, compile=decoding.compile)
    return _cut_at_eos(new.tolist(), eos_id)


@torch.no_grad()
def hf_generate(model: PreTrainedModel, batch: Batch, decoding: Decoding, eos_id: int, pad_id: int, vocab_size: int,
                synced: bool = False) -> list[list[int]]:
    """`generate` with Hugging Face `generate` for every model and setting (the reference the fast
    decoder is checked and measured against)."""
    model_vocab = model.get_output_embeddings().weight.shape[0]
    start = model.config.decoder_start_token_id if model.config.is_encoder_decoder else None
    config = generation_config(decoding, eos_id, pad_id, list(range(vocab_size, model_vocab)), start)
    with _own_generation_config(model):
        out = model.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, generation_config=config,
                             synced_gpus=synced)
    new = out[:, 1:] if model.config.is_encoder_decoder else out[:, batch.prompt_ids.shape[1]:]
    return _cut_at_eos(new.tolist(), eos_id)


def _cut_at_eos(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


def predictions(model: PreTrainedModel, batch: Batch, decoding: Decoding, eos_id: int, pad_id: int, vocab_size: int,
                synced: bool = False) -> list[tuple[int, list[int]]]:
    """(example index, its first decoded sequence) for each example of `batch`: what is scored."""
    sequences = generate(model, batch, decoding, eos_id, pad_id, vocab_size, synced)
    return list(zip(batch.index.tolist(), sequences[:: decoding.num_return_sequences]))
