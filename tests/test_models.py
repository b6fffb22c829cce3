"""Models: HF save/load round trip, the vocabulary check, target-logit alignment, decoding."""

from __future__ import annotations

import pytest
import torch

from kdlight.data.batch import collate
from kdlight.data.tokenizer import train_tokenizer
from kdlight.models import Decoding, ModelSpec, build_model, generate, target_logits
from kdlight.models.build import save_model
from kdlight.models.vocab import ModelVocab, VocabularyMismatch, shared_vocab_size
from tests.helpers import tiny_model, toy_batches


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_save_pretrained_then_from_pretrained_gives_the_same_model(tokenizer, tmp_path, family):
    model = tiny_model(tokenizer, family, pad_multiple=64)
    folder = save_model(model, tokenizer, tmp_path / "model")
    loaded = build_model(ModelSpec("reloaded", path=str(folder)), tokenizer)
    assert type(loaded) is type(model) and loaded.config.is_encoder_decoder == (family == "t5")
    batch = toy_batches(tokenizer)[0]
    torch.testing.assert_close(target_logits(loaded.eval(), batch), target_logits(model.eval(), batch))


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_target_logits_do_not_depend_on_padding(tokenizer, family):
    """Each example's target logits are the same alone and inside a padded batch."""
    model = tiny_model(tokenizer, family).eval()
    batch = toy_batches(tokenizer, n=4)[0]
    together = target_logits(model, batch)
    for i in range(batch.size):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        target = batch.target_ids[i][batch.target_mask[i].bool()].tolist()
        alone = target_logits(model, collate([prompt], [target], [0], tokenizer.pad_token_id))
        torch.testing.assert_close(together[i, : len(target)], alone[0], rtol=1e-4, atol=1e-5)


def test_causal_target_logits_are_the_positions_that_predict_each_target_token(tokenizer):
    model = tiny_model(tokenizer, "llama").eval()
    prompt, target = [7, 8, 9, 10], [11, 12, tokenizer.eos_token_id]
    full = model(input_ids=torch.tensor([prompt + target])).logits[0]  # [P+T, V]
    picked = target_logits(model, collate([prompt], [target], [0], tokenizer.pad_token_id))[0]
    torch.testing.assert_close(picked, full[len(prompt) - 1: len(prompt) + len(target) - 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_generate_is_greedy_with_cache_and_stops_at_eos(tokenizer, family):
    model = tiny_model(tokenizer, family, pad_multiple=64).eval()
    batch = toy_batches(tokenizer, n=3)[0]
    vocab = len(tokenizer)
    outputs = generate(model, batch, Decoding(max_new_tokens=5), tokenizer.eos_token_id, tokenizer.pad_token_id, vocab)
    for i, produced in enumerate(outputs):
        assert 1 <= len(produced) <= 5 and all(t < vocab for t in produced)
        assert tokenizer.eos_token_id not in produced[:-1]
        # a manual greedy loop without the cache, one example at a time, over the real vocabulary
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        manual = []
        for _ in range(len(produced)):
            logits = target_logits(model, collate([prompt], [manual + [0]], [0], tokenizer.pad_token_id), vocab)
            manual.append(int(logits[0, len(manual)].argmax()))
            if manual[-1] == tokenizer.eos_token_id:
                break
        assert produced == manual


def test_padding_rows_are_handled_and_real_mismatches_are_named(tokenizer):
    student = tiny_model(tokenizer, "llama")
    teacher = tiny_model(tokenizer, "llama", pad_multiple=64)
    assert teacher.get_output_embeddings().weight.shape[0] > len(tokenizer)
    assert shared_vocab_size(tokenizer, [ModelVocab("student", student), ModelVocab("teacher", teacher)]) == len(tokenizer)

    other = train_tokenizer(["SELECT something else entirely FROM elsewhere"] * 5, vocab_size=300)
    with pytest.raises(VocabularyMismatch, match=r"teacher tokenizer .*\(\d+ tokens\) differs from the run's tokenizer .*\(\d+ tokens\)"):
        shared_vocab_size(tokenizer, [ModelVocab("student", student), ModelVocab("teacher", teacher, other)])
    small = tiny_model(other, "llama")
    with pytest.raises(VocabularyMismatch, match=rf"student model has {len(other)} output rows .* {len(tokenizer)} tokens"):
        shared_vocab_size(tokenizer, [ModelVocab("student", small)])


def test_unknown_family_and_missing_source_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="unknown family 'lama'"):
        build_model(ModelSpec("x", family="lama"), tokenizer)
    with pytest.raises(ValueError, match="set either `path`"):
        build_model(ModelSpec("x"), tokenizer)
