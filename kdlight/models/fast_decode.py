"""A fast batched decoder for plain Llama and Qwen2 causal LMs: greedy and ancestral sampling on a
preallocated KV cache, without the per-step machinery of Hugging Face `generate`.

On-policy methods (GKD, ImitKD, f-distill, Joint-Teaching) spend most of a step decoding the
student's samples, and the students are small: on a CPU a decode step of such a model is a few
matrix products of 8 rows, so what HF `generate` does around them each step (input preparation, a
4-D mask built anew, a `DynamicCache` that concatenates, hence copies, every layer's keys and values,
logits processors, stopping-criteria objects, the model's decorated forward) costs about as much
as the model itself. Here:

- the prompt goes through the model's own forward once (HF's prefill, the logits of the last
  position only), and its keys and values are copied into buffers sized for the continuation;
- each further step (`decode_step`) runs the decoder layers' own modules (norms, projections, MLP:
  LoRA adapters included) on the new token, writes its key and value in place, and attends with
  two small matrix products over the filled part of the cache (prompt padding masked);
- the next token is the argmax (greedy) or a draw (`draw`, inverse transform sampling) from the
  softmax of the logits divided by the temperature (the full distribution: `top_k` 0, `top_p` 1),
  with the embedding's padding rows (ids >= vocab_size) excluded, as HF's `SuppressTokens` does;
  finished rows get the pad token, and decoding stops once every row has emitted EOS.
- optionally (`compile=True`) the step runs through `torch.compile` (see `compiled_step`).

The arithmetic is HF's up to rounding: the same modules and the model's own rotary embedding;
positions are counted by column here, while `generate` counts them from each row's first real
token, which gives the same attention (rotary attention depends only on relative positions; the
padding is masked) but not the same bits; and the attention sums in another order than SDPA's
kernel (inductor fuses differently again when compiled). Logits may therefore differ in the last
bits, which changes a greedy token only at an exact tie: greedy outputs equal HF `generate`'s
token for token (tests/test_fast_decode.py). Sampling draws from the same distribution as HF, with
another sampler (one uniform number per row instead of `torch.multinomial`'s exponential number
per vocabulary entry, 30x cheaper at an 8k vocabulary), so the draws under one seed are not HF's;
they repeat under the seed.

Only what is checked against HF `generate` takes this path (`unsupported_reason` says why not):
float32 Llama / Qwen2 causal LMs (also pruned, also LoRA-wrapped) with SDPA attention, full (not
sliding-window) and a position-only rotary embedding, in eval mode, on a CPU; greedy, or sampling
with top_k 0 and top_p 1. Everything else (seq2seq models, beam search, top-k / nucleus sampling,
other families, GPUs, sharded models) runs HF `generate` (`kdlight.models.decoding.generate`).
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedModel, Qwen2ForCausalLM

# The decoder-layer structure this module re-implements one step of (checked per class, not per
# `model_type`, so that a subclass with a different forward never slips in).
SUPPORTED_CLASSES = (LlamaForCausalLM, Qwen2ForCausalLM)
# Rotary embeddings that depend on the position only (the cos/sin of every position are computed
# once); `dynamic` and `longrope` rescale with the sequence length seen so far.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def unsupported_reason(model: PreTrainedModel, strategy: str, top_k: int, top_p: float) -> str | None:
    """Why `fast_generate` cannot decode with `model` and these settings (None: it can)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config
    if type(base) not in SUPPORTED_CLASSES:
        return f"{type(base).__name__} is not one of {[c.__name__ for c in SUPPORTED_CLASSES]}"
    if strategy not in ("greedy", "sample"):
        return f"strategy {strategy}"
    if strategy == "sample" and (top_k != 0 or top_p != 1.0):
        return "top-k or nucleus sampling"
    if model.training:
        return "the model is in training mode (dropout)"
    if base.device.type != "cpu" or base.dtype != torch.float32:
        return f"checked on float32 CPU models only, not {base.dtype} on {base.device.type}"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "sliding-window attention"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if getattr(base.model.rotary_emb, "rope_type", None) not in STATIC_ROPE_TYPES:
        return f"rotary embedding type {getattr(base.model.rotary_emb, 'rope_type', None)}"
    if config._attn_implementation != "sdpa":
        return f"attention implementation {config._attn_implementation}"
    return None


class _StaticCache:
    """Keys and values of every layer, preallocated for prompt + continuation: [B, H_kv, L_max, D]."""

    def __init__(self, prefill: DynamicCache, capacity: int) -> None:
        self.keys, self.values = [], []
        for layer in prefill.layers:
            for source, buffers in ((layer.keys, self.keys), (layer.values, self.values)):
                b, heads, filled, dim = source.shape
                buffer = source.new_empty(b, heads, capacity, dim)
                buffer[:, :, :filled] = source
                buffers.append(buffer)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
            scaling: float) -> torch.Tensor:
    """One query token per row over the cache: [B, H, 1, D] -> [B, 1, H·D].

    Grouped-query heads are folded as HF's `pack_gqa` does (head h reads key/value head
    h // n_rep), so no key is repeated. `bias`: 0 for real positions, -inf for prompt padding,
    [B, 1, 1, L] (broadcast over heads and the folded query heads).
    """
    b, heads, _, dim = query.shape
    kv_heads = keys.shape[1]
    query = query.reshape(b, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(query, keys.transpose(-1, -2)).mul_(scaling).add_(bias)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, values).reshape(b, 1, heads * dim)


@torch.no_grad()
def fast_generate(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                  eos_id: int, pad_id: int, vocab_size: int, sample: bool = False, temperature: float = 1.0,
                  compile: bool = False) -> torch.Tensor:
    """Continue each left-padded prompt: [B, P] -> new tokens [B, T <= max_new_tokens].

    A row that emitted EOS continues with `pad_id`; decoding stops once every row has, or after
    `max_new_tokens`. Ids >= `vocab_size` (the embedding's padding rows) are never produced.
    `compile`: run the decode step through `torch.compile` (see `compiled_step`; LoRA-wrapped
    models stay eager). Only for models and settings `unsupported_reason` accepts.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    decoder = base.model
    batch, prompt_len = prompt_ids.shape
    # The prompt: HF's own forward, exactly as `generate` runs it (positions from 0 at the first,
    # possibly padding, column; HF's mask for left padding), projecting only the last position.
    prefill = DynamicCache(config=base.config)
    logits = base(input_ids=prompt_ids, attention_mask=prompt_mask, cache=prefill, use_cache=True,
                  logits_to_keep=1).logits[:, -1].float()
    capacity = prompt_len + max_new_tokens - 1  # the last new token is never fed back
    cache = _StaticCache(prefill, capacity)
    del prefill
    bias = torch.zeros(batch, 1, 1, capacity, dtype=decoder.embed_tokens.weight.dtype)
    bias[:, 0, 0, :prompt_len].masked_fill_(prompt_mask == 0, float("-inf"))
    # Rotary cos/sin for every position at once (one row per position, selected each step).
    cos, sin = decoder.rotary_emb(bias, torch.arange(capacity).view(1, -1))
    step = compiled_step() if compile and not isinstance(model, PeftModel) else decode_step

    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long)
    unfinished = torch.ones(batch, dtype=torch.bool)
    for index in range(max_new_tokens):
        logits = logits[:, :vocab_size]  # the embedding's padding rows are never produced
        if sample:
            chosen = draw(torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1))
        else:
            chosen = logits.argmax(dim=-1)
        chosen = chosen.masked_fill_(~unfinished, pad_id)
        tokens[:, index] = chosen
        unfinished &= chosen != eos_id
        if index == max_new_tokens - 1 or not unfinished.any():
            return tokens[:, : index + 1]
        position = prompt_len + index  # the column of the token just chosen
        logits = step(base, chosen, torch.tensor([position]), position + 1, cache.keys, cache.values, bias, cos, sin)
    raise AssertionError("unreachable: the loop returns at its last step")


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` [B, V] (unnormalised weights are fine) by inverse transform
    sampling: a uniform number per row from `generator` (None: torch's global one), located in the
    row's cumulative sum (float64). The first entry whose sum exceeds it is drawn, so a token of
    probability 0 never is. `torch.multinomial` (HF's sampler) draws an exponential number per
    vocabulary entry: ~1.6 ms for 8 x 8k here, a sixth of a small model's decode step, against
    ~0.05 ms. `probs` and `generator` on the CPU."""
    cdf = probs.cumsum(-1, dtype=torch.float64)
    total = cdf[:, -1:]
    if not bool(((total > 0) & torch.isfinite(total)).all()):  # as torch.multinomial refuses them
        raise ValueError("sampling: a row of probabilities is NaN, infinite or all zero (non-finite logits?)")
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, generator=generator) * total
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max_(probs.shape[-1] - 1)


def decode_step(model: PreTrainedModel, chosen: torch.Tensor, position: torch.Tensor, length: int,
                keys: list[torch.Tensor], values: list[torch.Tensor], bias: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
    """Feed `chosen` [B] at column `position` ([1]; `length` = position + 1) through the decoder
    layers' own modules, writing its keys and values into the cache in place: the next logits
    [B, V] (float32). `bias`, `cos`, `sin`: for every column of the cache."""
    decoder = model.model
    rotate = _rotary_function(model)
    batch = chosen.shape[0]
    hidden = decoder.embed_tokens(chosen[:, None])  # [B, 1, H]
    step_cos, step_sin = cos.index_select(1, position), sin.index_select(1, position)
    step_bias = bias[..., :length]
    for layer, layer_keys, layer_values in zip(decoder.layers[: model.config.num_hidden_layers], keys, values):
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        shape = (batch, 1, -1, attention.head_dim)
        query = attention.q_proj(normed).view(shape).transpose(1, 2)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        query, key = rotate(query, key, step_cos, step_sin)
        layer_keys.index_copy_(2, position, key)
        layer_values.index_copy_(2, position, value)
        attended = _attend(query, layer_keys[:, :, :length], layer_values[:, :, :length], step_bias, attention.scaling)
        hidden = hidden + attention.o_proj(attended)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(decoder.norm(hidden))[:, -1].float()


_COMPILED_STEP = None


def compiled_step():
    """`decode_step` through `torch.compile` (inductor, dynamic shapes), made once per process.

    The elementwise work between the matrix products (norms, rotary, softmax, residuals) fuses
    into a few C++ loops and the per-op dispatch goes away; one compilation (tens of seconds on a
    small CPU) serves every batch size, prompt length and step of a model, and the weights are
    read at each call, so a model trained between calls needs none. A new model object compiles
    again (after torch._dynamo's recompile limit, 8, it runs eagerly). Worth it only over many
    calls (an on-policy training run), not for a few.
    """
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(decode_step, dynamic=True)
    return _COMPILED_STEP


def _rotary_function(model: PreTrainedModel):
    """The model family's own `apply_rotary_pos_emb` (the one its attention calls)."""
    import sys

    return sys.modules[type(model).__module__].apply_rotary_pos_emb
