"""One interface over causal and seq2seq LMs: the logits at target positions (decoding:
`kdlight.models.decoding`).

Every loss in kdlight works on `target_logits(...)[B, T, V]`, aligned with `batch.target_ids`, so
teacher and student may even differ in architecture. Dispatch is on `config.is_encoder_decoder`.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from kdlight.data.batch import Batch


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
        ids = torch.cat([batch.prompt_ids, batch.target_ids], dim=1)  # [B, P+T]
        mask = torch.cat([batch.prompt_mask, batch.target_mask], dim=1)
        positions = position_ids(mask)
        t = batch.target_ids.shape[1]
        # The last T+1 positions are P-1 .. P+T-1; the final one predicts past the target.
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=t + 1, use_cache=False).logits[:, :-1]
    return logits[..., :vocab_size] if vocab_size is not None else logits


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as HF `generate` does for left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
