"""One interface over causal and seq2seq LMs: the logits at target positions (decoding:
`kdlight.models.decoding`).

Every loss in kdlight works on `target_logits(...)[B, T, V]`, aligned with `batch.target_ids`, so
teacher and student may even differ in architecture. Dispatch is on `config.is_encoder_decoder`.

For the fused output head (`kdlight.losses.fused`), a causal LM whose logits are a plain linear
projection of its last hidden state (`OutputHead`: Llama, Qwen2, Mistral and their pruned and LoRA
variants) also gives its hidden states at the target positions, so the `[N, V]` logits can be
formed chunk by chunk inside the loss instead of all at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import (LlamaForCausalLM, MistralForCausalLM, PreTrainedModel, Qwen2ForCausalLM,
                          Qwen3ForCausalLM)

from kdlight.data.batch import Batch

# Causal LMs whose forward is exactly `lm_head(model(...).last_hidden_state)`: no logit soft-capping
# (Gemma 2), no logit scale (Cohere), no scaling of the hidden state (tied T5). Matched by exact
# class, so a subclass or remote-code model with another forward never slips in.
PLAIN_HEAD_MODELS = (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM)


def target_logits(model: PreTrainedModel, batch: Batch, vocab_size: int | None = None) -> torch.Tensor:
    """Logits predicting each target token: [B, T, V] (V sliced to `vocab_size` when given).

    Causal LM: input is prompt ⊕ target (prompt left-padded, target right-padded), so the logits
    predicting target token j sit at position P - 1 + j; only those T positions are projected to
    the vocabulary (`logits_to_keep`). Seq2seq: prompt to the encoder, shifted target to the decoder.
    """
    if model.config.is_encoder_decoder:
        start = torch.full_like(batch.target_ids[:, :1], model.config.decoder_start_token_id)
        decoder_input = torch.cat([start, batch.target_ids[:, :-1]], dim=1)  # [B, T]
        logits = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                       decoder_input_ids=decoder_input, use_cache=False).logits
    else:
        t = batch.target_ids.shape[1]
        # The last T+1 positions are P-1 .. P+T-1; the final one predicts past the target.
        logits = model(**_causal_inputs(batch), logits_to_keep=t + 1, use_cache=False).logits[:, :-1]
    return logits[..., :vocab_size] if vocab_size is not None else logits


def set_training(model: torch.nn.Module, mode: bool) -> None:
    """`model.train(mode)` unless the model is already in that mode. `train` walks every submodule
    (~0.1-0.3 ms on a small model), and the loop sets the student's and the teacher's mode several
    times a step; a caller's `.train()`/`.eval()` on the model itself changes the flag read here."""
    if model.training != mode:
        model.train(mode)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as HF `generate` does for left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def target_positions(target_mask: torch.Tensor) -> torch.Tensor:
    """Flat indices (into B·T, row-major) of the positions that carry loss: [B, T] -> [N] int64.
    Computed once per batch and shared by student, teacher and targets (an index gathers and
    scatters faster than a boolean mask, whose backward is a masked scatter)."""
    return target_mask.flatten().nonzero().squeeze(1)


def take_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> [N, ...] rows at `positions` (from `target_positions`)."""
    return values.flatten(0, 1).index_select(0, positions)


@dataclass
class OutputHead:
    """A model's output projection: logits = hidden @ weight[:V].T (+ bias[:V])."""

    weight: torch.Tensor  # [V_model, H]
    bias: torch.Tensor | None = None


def output_head(model: PreTrainedModel) -> OutputHead | None:
    """The linear output projection of a causal LM in `PLAIN_HEAD_MODELS`, or None (the loss then
    takes the model's logits)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head = base.get_output_embeddings()
    if type(base) not in PLAIN_HEAD_MODELS or type(head) is not torch.nn.Linear:
        return None
    return OutputHead(head.weight, head.bias)


def target_hidden(model: PreTrainedModel, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
    """The last hidden states that predict the target tokens at `positions`: [N, H] (the input of
    `output_head(model)`; only for models it supports)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    t = batch.target_ids.shape[1]
    hidden = base.model(**_causal_inputs(batch), use_cache=False).last_hidden_state  # [B, P+T, H]
    return take_positions(hidden[:, -t - 1:-1], positions)


def _causal_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """prompt ⊕ target as one left-padded causal LM input, with positions from the first real token."""
    mask = torch.cat([batch.prompt_mask, batch.target_mask], dim=1)
    return {"input_ids": torch.cat([batch.prompt_ids, batch.target_ids], dim=1), "attention_mask": mask,
            "position_ids": position_ids(mask)}
