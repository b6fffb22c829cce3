"""Decoding: one typed setting, every field explicit; batched decoding equals Hugging Face's own
`generate` on each prompt alone; sampling is from the full distribution unless asked otherwise."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from kdlight.data.batch import collate
from kdlight.models import Decoding, generate
from tests.helpers import tiny_model, toy_batches


def hf_alone(model, prompt: list[int], tokenizer, **settings) -> list[list[int]]:
    """Hugging Face `generate` on one unpadded prompt, settings given explicitly, cut at EOS."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **settings)
    new = out[:, 1:] if model.config.is_encoder_decoder else out[:, len(prompt):]
    eos = tokenizer.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in new.tolist()]


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("decoding", [Decoding(max_new_tokens=7), Decoding("beam", num_beams=3, max_new_tokens=7),
                                      Decoding("beam", num_beams=3, num_return_sequences=2, max_new_tokens=7)],
                         ids=["greedy", "beam", "beam-2-returned"])
def test_batched_decoding_equals_hf_generate_on_each_prompt_alone(tokenizer, family, decoding):
    model = tiny_model(tokenizer, family, seed=4).eval()
    batch = toy_batches(tokenizer, n=5, seed=2)[0]  # prompts of different lengths: padding matters
    ours = generate(model, batch, decoding, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    n = decoding.num_return_sequences
    assert len(ours) == batch.size * n
    for i in range(batch.size):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        expected = hf_alone(model, prompt, tokenizer, max_new_tokens=7, do_sample=False, num_beams=decoding.num_beams,
                            num_return_sequences=n, length_penalty=1.0, early_stopping=False)
        assert ours[i * n:(i + 1) * n] == expected, i


def distinct_first_tokens(model, tokenizer, decoding: Decoding, draws: int = 400) -> set[int]:
    prompt = [5, 6, 7]
    batch = collate([prompt] * draws, [[tokenizer.eos_token_id]] * draws, list(range(draws)), tokenizer.pad_token_id)
    torch.manual_seed(0)
    samples = generate(model, batch, decoding, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    return {s[0] for s in samples}


def test_sampling_draws_from_the_full_distribution_not_the_library_default_top_50(tokenizer):
    """A near-uniform model over 400 tokens: 400 draws of the first token see far more than 50
    distinct tokens. transformers fills an unset top_k with 50, which capped this at 50."""
    model = tiny_model(tokenizer, seed=5, initializer_range=1e-4).eval()  # logits ~ 0: nearly uniform
    model.generation_config = GenerationConfig(top_k=3, temperature=0.1, repetition_penalty=5.0)  # must not leak in
    full = distinct_first_tokens(model, tokenizer, Decoding("sample", max_new_tokens=1))
    assert len(full) > 150
    capped = distinct_first_tokens(model, tokenizer, Decoding("sample", top_k=50, max_new_tokens=1))
    assert len(capped) <= 50  # the same request with the old implicit cap
    assert len(distinct_first_tokens(model, tokenizer, Decoding("sample", top_k=5, max_new_tokens=1))) <= 5
    assert model.generation_config.top_k == 3  # the model's own settings are left as they were


def test_sampling_returns_several_sequences_per_prompt_prompt_major(tokenizer):
    model = tiny_model(tokenizer, seed=5, initializer_range=1e-4).eval()
    batch = toy_batches(tokenizer, n=3)[0]
    torch.manual_seed(0)
    out = generate(model, batch, Decoding("sample", num_return_sequences=4, max_new_tokens=6), tokenizer.eos_token_id,
                   tokenizer.pad_token_id, len(tokenizer))
    assert len(out) == 12 and len({tuple(s) for s in out[:4]}) > 1  # four different draws for prompt 0


@pytest.mark.parametrize("bad,match", [
    (dict(strategy="nucleus"), "strategy must be one of"),
    (dict(strategy="beam", num_beams=1), "beam search needs num_beams >= 2"),
    (dict(num_beams=4), "only goes with strategy=beam"),
    (dict(num_return_sequences=2), "greedy decoding returns one sequence"),
    (dict(strategy="beam", num_beams=2, num_return_sequences=3), "cannot exceed num_beams"),
    (dict(strategy="sample", top_p=0.0), "0 < top_p <= 1"),
    (dict(max_new_tokens=0), "at least 1"),
])
def test_impossible_settings_are_refused_when_built(bad, match):
    with pytest.raises(ValueError, match=match):
        Decoding(**bad)


def test_the_cache_key_holds_only_what_changes_the_output():
    assert Decoding(temperature=0.5).key() == Decoding().key()  # greedy ignores the temperature
    assert Decoding("sample", temperature=0.5).key() != Decoding("sample").key()
    assert Decoding("beam", num_beams=4).key() != Decoding("beam", num_beams=5).key()
