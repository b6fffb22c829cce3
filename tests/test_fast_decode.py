"""The static-cache decoder (kdlight.models.fast_decode) against Hugging Face `generate`: the same
greedy tokens on Llama and Qwen2 (grouped-query heads, left padding, EOS mid-sequence, padded
vocabulary rows that would otherwise win, pruned and LoRA models); samples restricted to the real
vocabulary, reproducible under a seed and following the model's distribution; everything it does not support goes to HF `generate`."""

from __future__ import annotations

import pytest
import torch

from kdlight.data.batch import collate
from kdlight.models import Decoding, ModelSpec, build_model, generate
from kdlight.models.decoding import hf_generate
from kdlight.models.fast_decode import draw, unsupported_reason
from kdlight.models.lora import LoraSpec, add_lora
from tests.helpers import tiny_model, toy_batches

# Untied, with larger weights than HF's default init: outputs vary instead of echoing the input
# (a tied random model's greedy continuation mostly repeats its last token). Grouped-query heads:
# 4 query heads read 2 key/value heads.
CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False, "initializer_range": 0.3}


def model_for(tokenizer, family: str, seed: int = 0, **overrides):
    """A random-init causal LM with 64-row vocabulary padding, whose padding rows are made to win:
    each is 50x a real row's output weights, so it beats that row whenever the row's logit is
    positive (`generate` must never emit them)."""
    torch.manual_seed(seed)
    spec = ModelSpec(f"tiny-{family}", family, {**CONFIG, **overrides.pop("config", {})}, pad_vocab_multiple=64,
                     **overrides)
    model = build_model(spec, tokenizer).eval()
    head = model.get_output_embeddings().weight
    vocab = len(tokenizer)
    with torch.no_grad():
        head[vocab:] = 50 * head[: head.shape[0] - vocab]
    return model


def varied_batch(tokenizer, n: int = 6, seed: int = 3):
    """Prompts of 2 to 20 tokens, left-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    lengths = [2, 20, 7, 13, 4, 9][:n]
    prompts = [torch.randint(5, len(tokenizer), (k,), generator=g).tolist() for k in lengths]
    return collate(prompts, [[tokenizer.eos_token_id]] * n, list(range(n)), tokenizer.pad_token_id)


def eos_mid_sequence(model, batch, tokenizer, steps: int) -> int:
    """A token id that HF's greedy decoding emits in some rows but not in all, used as EOS so that
    rows finish at different steps and some never do."""
    rows = hf_generate(model, batch, Decoding(max_new_tokens=steps), -1, tokenizer.pad_token_id, len(tokenizer))
    for token in (t for row in rows for t in row[1:steps - 1]):
        if 0 < sum(token in row for row in rows) < len(rows):
            return token
    raise AssertionError("no token emitted in some rows only")


def decode_both(model, batch, decoding: Decoding, tokenizer, eos_id: int):
    assert unsupported_reason(model, decoding.strategy, decoding.top_k, decoding.top_p) is None  # the fast path runs
    args = (eos_id, tokenizer.pad_token_id, len(tokenizer))
    return generate(model, batch, decoding, *args), hf_generate(model, batch, decoding, *args)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_tokens_equal_hf_generate_with_padding_eos_and_padded_vocabulary(tokenizer, family):
    model = model_for(tokenizer, family)
    batch = varied_batch(tokenizer)
    unsuppressed = model.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, max_new_tokens=12,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert (unsuppressed >= len(tokenizer)).any()  # the padding rows would win if not excluded
    eos = eos_mid_sequence(model, batch, tokenizer, steps=12)
    ours, reference = decode_both(model, batch, Decoding(max_new_tokens=12), tokenizer, eos)
    assert ours == reference
    lengths = {len(row) for row in ours}
    assert len(lengths) > 1 and 12 in lengths and any(row[-1] == eos for row in ours)  # EOS cut mid-sequence
    assert max(max(row) for row in ours) < len(tokenizer)


def test_greedy_tokens_equal_hf_generate_on_longer_continuations(tokenizer):
    """64 steps from prompts of 2 to 20 tokens: the cache fills from a short prefix."""
    model = model_for(tokenizer, "llama", seed=1, config={"num_key_value_heads": 4})
    batch = varied_batch(tokenizer, seed=7)
    ours, reference = decode_both(model, batch, Decoding(max_new_tokens=64), tokenizer, tokenizer.eos_token_id)
    assert ours == reference and max(len(row) for row in ours) == 64


def test_greedy_tokens_equal_hf_generate_for_pruned_and_lora_models(tokenizer):
    pruned = model_for(tokenizer, "llama", seed=2, config={"num_hidden_layers": 3}, prune={"keep_layers": [0, 2]})
    assert pruned.config.num_hidden_layers == 2
    batch = varied_batch(tokenizer)
    ours, reference = decode_both(pruned, batch, Decoding(max_new_tokens=10), tokenizer, tokenizer.eos_token_id)
    assert ours == reference

    lora = add_lora(model_for(tokenizer, "llama", seed=3), LoraSpec(r=4, dropout=0.1)).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that change the outputs (LoRA's B starts at zero)
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    plain = hf_generate(lora.get_base_model(), batch, Decoding(max_new_tokens=10), -1, 0, len(tokenizer))
    with lora.disable_adapter():
        without = hf_generate(lora, batch, Decoding(max_new_tokens=10), -1, 0, len(tokenizer))
    ours, reference = decode_both(lora, batch, Decoding(max_new_tokens=10), tokenizer, tokenizer.eos_token_id)
    assert ours == reference and ours != without and plain != without


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_samples_stay_in_the_vocabulary_and_repeat_under_a_seed(tokenizer, family):
    model = model_for(tokenizer, family)
    batch = varied_batch(tokenizer)
    decoding = Decoding("sample", num_return_sequences=3, max_new_tokens=16, temperature=1.5)
    args = (tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(generate(model, batch, decoding, *args))
    assert draws[0] == draws[1] and draws[0] != draws[2]
    assert len(draws[0]) == 3 * batch.size and max(t for row in draws[0] + draws[2] for t in row) < len(tokenizer)


def test_draw_never_picks_a_token_of_probability_zero_and_follows_the_rest():
    """Inverse transform sampling on rows with zeros first, between and last, and a one-hot row."""
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.0, 0.8, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    torch.manual_seed(0)
    drawn = torch.stack([draw(probs) for _ in range(20000)])  # [draws, 2]
    assert set(drawn[:, 0].tolist()) == {1, 4} and set(drawn[:, 1].tolist()) == {3}
    assert float((drawn[:, 0] == 1).float().mean()) == pytest.approx(0.2, abs=0.01)  # std 0.003
    for bad in (torch.zeros(1, 6), torch.full((1, 6), float("nan"))):  # refused, as torch.multinomial does
        with pytest.raises(ValueError, match="NaN, infinite or all zero"):
            draw(bad)


def test_sampling_follows_the_model_distribution(tokenizer):
    """The first sampled token's frequencies over 4000 draws match the model's softmax (with the
    padding rows at probability zero)."""
    model = model_for(tokenizer, "llama", config={"initializer_range": 0.05})
    prompt = [5, 6, 7, 8]
    draws = 4000
    batch = collate([prompt] * draws, [[1]] * draws, list(range(draws)), tokenizer.pad_token_id)
    torch.manual_seed(0)
    first = torch.tensor([row[0] for row in generate(model, batch, Decoding("sample", max_new_tokens=1),
                                                     tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1, : len(tokenizer)]
    expected = torch.softmax(logits, -1)
    observed = torch.bincount(first, minlength=len(tokenizer)).float() / draws
    assert (observed - expected).abs().sum() < 0.25  # total variation ~0.12 expected from 4000 draws
    top = expected.topk(5).indices
    assert torch.allclose(observed[top], expected[top], atol=0.02)


@pytest.mark.parametrize("case", ["t5", "beam", "top_k", "training", "bfloat16"])
def test_what_it_does_not_support_gets_hf_generate_outputs(tokenizer, case):
    if case == "t5":
        model, decoding = tiny_model(tokenizer, "t5", seed=4).eval(), Decoding(max_new_tokens=7)
    else:
        model = model_for(tokenizer, "llama", seed=4, dtype="bfloat16" if case == "bfloat16" else "float32")
        model.train(case == "training")
        decoding = {"beam": Decoding("beam", num_beams=3, num_return_sequences=2, max_new_tokens=7),
                    "top_k": Decoding("sample", top_k=5, max_new_tokens=7)}.get(case, Decoding(max_new_tokens=7))
    assert unsupported_reason(model, decoding.strategy, decoding.top_k, decoding.top_p) is not None
    batch = toy_batches(tokenizer, n=5, seed=2)[0]
    args = (tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    torch.manual_seed(0)
    ours = generate(model, batch, decoding, *args)
    torch.manual_seed(0)
    assert ours == hf_generate(model, batch, decoding, *args)


@pytest.mark.slow
def test_compiled_step_equals_hf_generate_and_sees_weights_changed_in_place(tokenizer):
    """`Decoding(compile=True)`: the same greedy tokens, for several batch sizes and prompt lengths
    (one compilation), and after an in-place weight update (as an optimiser step makes)."""
    model = model_for(tokenizer, "llama")
    decoding = Decoding(max_new_tokens=12, compile=True)
    args = (tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    for batch in (varied_batch(tokenizer), varied_batch(tokenizer, n=3, seed=5), toy_batches(tokenizer, n=4)[0]):
        assert generate(model, batch, decoding, *args) == hf_generate(model, batch, decoding, *args)
    before = generate(model, batch, decoding, *args)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter), alpha=0.1)
    after = generate(model, batch, decoding, *args)
    assert after == hf_generate(model, batch, decoding, *args) and after != before
