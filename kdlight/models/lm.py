"""One interface over causal and seq2seq LMs: logits at target positions, and batched decoding.

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


@torch.no_grad()
def generate(model: PreTrainedModel, batch: Batch, max_new_tokens: int, eos_id: int, vocab_size: int,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_beams: int = 1, synced: bool = False) -> list[list[int]]:
    """Decode a continuation per prompt with the KV cache (greedy, sampled, or the best beam);
    each ends at its first EOS (kept). `synced`: keep stepping until every rank is done, which a
    model sharded across ranks needs (its forward is collective).

    Token ids at or above `vocab_size` (padding rows of the embedding) are never produced.
    """
    model_vocab = model.get_output_embeddings().weight.shape[0]
    extra = dict(temperature=temperature, top_p=top_p) if do_sample else {}
    out = model.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                         max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=num_beams, use_cache=True,
                         synced_gpus=synced,
                         suppress_tokens=list(range(vocab_size, model_vocab)) or None, **extra)
    new = out[:, 1:] if model.config.is_encoder_decoder else out[:, batch.prompt_ids.shape[1]:]
    sequences = []
    for row in new.tolist():
        sequences.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return sequences
