"""Layer-pruned students and LoRA students on tiny models: what is kept is the source's, keeping
everything changes nothing, both train through `kdlight.train`, only adapters train, and the saved
model is a plain one a later run loads by path."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from kdlight import Run, train
from kdlight.data.tokenizer import load_tokenizer
from kdlight.losses import ForwardKL
from kdlight.methods import GoldSequences, Method
from kdlight.models import ModelSpec, build_model, target_logits
from kdlight.models.build import save_model
from kdlight.models.lora import LoraSpec, add_lora, merged
from kdlight.models.pruning import LayerPruning, LayerSelection, layer_counts, prune_layers
from tests.helpers import TINY_LLAMA, TINY_T5, tiny_model, toy_batches
from tests.test_api import TRAINER, data, task

DEEP_LLAMA = {"num_hidden_layers": 5}
DEEP_T5 = {"num_layers": 3, "num_decoder_layers": 4}


def test_evenly_spaced_layers_keep_the_first_and_the_last():
    assert LayerSelection(num_layers=4).indices(30, "prune") == [0, 10, 19, 29]
    assert LayerSelection(num_layers=2).indices(5, "prune") == [0, 4]
    assert LayerSelection(num_layers=1).indices(5, "prune") == [0]
    assert LayerSelection(keep_layers=(3, 1)).indices(5, "prune") == [3, 1]


@pytest.mark.parametrize("spec, match", [
    ({"num_layers": 9}, r"num_layers=9: the model has 5 layers"),
    ({"keep_layers": [0, 5]}, r"keep_layers=\[0, 5\]: expected distinct indices in 0..4 .* out of range: \[5\]"),
    ({"keep_layers": [1, 1]}, r"expected distinct indices"),
    ({"num_layers": 2, "keep_layers": [0]}, r"exactly one of keep_layers .* or num_layers"),
    ({"decoder": {"num_layers": 1}}, r"prune.decoder: a causal model has the stacks \['layers'\]"),
    ({"layers": 2}, r"got keys \['layers'\]"),
])
def test_bad_pruning_settings_name_the_key_and_what_was_expected(tokenizer, spec, match):
    model = tiny_model(tokenizer, "llama", **DEEP_LLAMA)
    with pytest.raises(ValueError, match=match):
        prune_layers(model, LayerPruning.parse(spec))


def test_an_encoder_decoder_must_say_which_stack_to_prune(tokenizer):
    model = tiny_model(tokenizer, "t5", **DEEP_T5)
    with pytest.raises(ValueError, match=r"encoder-decoder model has the stacks \['decoder', 'encoder'\] \(say which"):
        prune_layers(model, LayerPruning.parse({"num_layers": 2}))


def test_kept_layers_are_the_source_layers_and_the_rest_is_copied(tokenizer):
    source = tiny_model(tokenizer, "llama", seed=3, **DEEP_LLAMA)
    pruned = prune_layers(source, LayerPruning.parse({"keep_layers": [4, 0, 2]}))
    assert layer_counts(pruned) == {"layers": 3} and pruned.config.num_hidden_layers == 3
    assert layer_counts(source) == {"layers": 5}  # the source is left as it was
    for new, old in enumerate([4, 0, 2]):
        for (name, a), (_, b) in zip(pruned.model.layers[new].state_dict().items(),
                                     source.model.layers[old].state_dict().items(), strict=True):
            assert torch.equal(a, b), (new, old, name)
        assert pruned.model.layers[new].self_attn.layer_idx == new  # its cache slot is its new position
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(pruned.state_dict()[name], source.state_dict()[name])
    assert pruned.get_output_embeddings().weight.shape == source.get_output_embeddings().weight.shape


@pytest.mark.parametrize("family, spec", [
    ("llama", {"num_layers": 5}),
    ("t5", {"encoder": {"num_layers": 3}, "decoder": {"keep_layers": [0, 1, 2, 3]}}),
])
def test_keeping_every_layer_gives_identical_logits(tokenizer, family, spec):
    source = tiny_model(tokenizer, family, seed=5, **(DEEP_LLAMA if family == "llama" else DEEP_T5)).eval()
    pruned = prune_layers(source, LayerPruning.parse(spec)).eval()
    batch = toy_batches(tokenizer, n=5, seed=1)[0]
    assert torch.equal(target_logits(pruned, batch), target_logits(source, batch))


def test_a_t5_decoder_without_its_first_block_keeps_the_relative_position_bias(tokenizer):
    """T5 holds the relative position bias in block 0 only; a student without block 0 still needs it."""
    source = tiny_model(tokenizer, "t5", seed=2, **DEEP_T5)
    pruned = prune_layers(source, LayerPruning.parse({"decoder": {"keep_layers": [2, 3]}}))
    assert layer_counts(pruned) == {"encoder": 3, "decoder": 2}
    bias = "decoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
    assert torch.equal(pruned.state_dict()[bias.format(0)], source.state_dict()[bias.format(0)])
    assert torch.equal(pruned.decoder.block[1].layer[2].DenseReluDense.wi.weight,
                       source.decoder.block[3].layer[2].DenseReluDense.wi.weight)


def tiny_spec(name: str, family: str, **fields) -> ModelSpec:
    base = {**TINY_LLAMA, "hidden_size": 32, **DEEP_LLAMA} if family == "llama" else {**TINY_T5, "d_model": 32, **DEEP_T5}
    return ModelSpec(name, family, base, **fields)


@pytest.mark.parametrize("family, prune, counts", [
    ("llama", {"num_layers": 2}, {"layers": 2}),
    ("t5", {"decoder": {"num_layers": 2}}, {"encoder": 3, "decoder": 2}),
])
def test_a_pruned_student_trains_and_saves_a_plain_model_of_its_new_depth(tmp_path, family, prune, counts):
    jsonl = task(tmp_path / "data")
    result = train(Run(data=data(jsonl), student=tiny_spec("pruned", family, prune=prune), trainer=TRAINER,
                       data_name="games"), tmp_path / "run")
    assert result.metrics["steps"] == 6 and result.metrics["eval/n"] == 12
    reloaded = build_model(ModelSpec("saved", path=str(result.model_dir)), load_tokenizer(result.model_dir))
    assert layer_counts(reloaded) == counts
    assert result.metrics["params"] == sum(p.numel() for p in reloaded.parameters())


def test_lora_trains_only_adapters_checkpoints_only_them_and_saves_the_merged_model(tmp_path, tokenizer):
    jsonl = task(tmp_path / "data")
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    result = train(Run(data=data(jsonl), student=tiny_spec("lora", "llama", lora=lora), trainer=TRAINER,
                       data_name="games", seed=1), tmp_path / "run")
    assert result.metrics["steps"] == 6
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    keys = set(state["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert {k.split(".")[-4] for k in keys} == {"q_proj", "v_proj"}
    assert len(keys) == 2 * 2 * DEEP_LLAMA["num_hidden_layers"]  # A and B of 2 modules per layer
    # Only adapter parameters reach the optimiser.
    adam = state["optimizer_states"][0]["state"]
    assert sum(s["exp_avg"].numel() for s in adam.values()) == sum(v.numel() for v in state["state_dict"].values())

    # model/ is a plain model: no adapter tensors, loadable by path; it differs from the untrained
    # base only where adapters were merged (q and v projections).
    saved = load_file(result.model_dir / "model.safetensors")
    assert not any("lora" in k for k in saved)
    assert json.loads((result.model_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    tok = load_tokenizer(result.model_dir)
    L.seed_everything(1)  # the base as the run built it: seeded, then built
    base = build_model(tiny_spec("lora", "llama"), tok).state_dict()
    changed = {k for k in saved if not torch.equal(saved[k], base[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)


def test_merged_lora_model_gives_the_adapted_models_logits(tokenizer):
    model = tiny_model(tokenizer, "llama", seed=2)
    adapted = add_lora(model, LoraSpec(r=2, alpha=4, dropout=0.0))
    with torch.no_grad():  # non-zero B, so the adapters change the output
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = toy_batches(tokenizer)[0]
    adapted.eval()
    expected = target_logits(adapted, batch)
    plain = merged(adapted)
    assert not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(target_logits(plain.eval(), batch), expected, rtol=1e-5, atol=1e-5)


def test_bad_lora_settings_and_a_lora_teacher_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"model 'x': lora: unknown keys \['rank'\] \(expected alpha, dropout, r, "):
        ModelSpec("x", "llama", lora={"rank": 4})
    with pytest.raises(ValueError, match=r"lora.r=0: the rank must be at least 1"):
        ModelSpec("x", "llama", lora={"r": 0})
    jsonl = task(tmp_path / "data")
    with pytest.raises(ValueError, match=r"student.lora with trainer=fsdp is not supported"):
        train(Run(data=data(jsonl), student=tiny_spec("s", "llama", lora={"r": 2}),
                  trainer={**TRAINER, "strategy": "fsdp"}), tmp_path / "fsdp")
    fkd = Method("fkd", GoldSequences(), ForwardKL())
    with pytest.raises(ValueError, match=r"teacher 'teacher': lora adapts the model a run trains"):
        train(Run(data=data(jsonl), student=tiny_spec("s", "llama"), method=fkd,
                      teacher=tiny_spec("teacher", "llama", lora={"r": 2}), trainer=TRAINER), tmp_path / "run")


@pytest.mark.parametrize("family, config, spec, counts", [
    ("gpt2", {"n_embd": 16, "n_layer": 4, "n_head": 2, "n_positions": 64}, {"keep_layers": [3, 1]}, {"layers": 2}),
    ("qwen2", {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
               "num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 4,
               "layer_types": ["full_attention", "sliding_attention"] * 2},
     {"keep_layers": [1, 2]}, {"layers": 2}),
    ("bart", {"d_model": 16, "encoder_layers": 3, "decoder_layers": 3, "encoder_attention_heads": 2,
              "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 64},
     {"encoder": {"keep_layers": [2]}, "decoder": {"num_layers": 2}}, {"encoder": 1, "decoder": 2}),
])
def test_other_architectures_prune_and_the_pruned_model_round_trips(tokenizer, tmp_path, family, config, spec, counts):
    """GPT-2 (Conv1D layers, n_layer), Qwen2 (per-layer attention kinds follow their layers), BART."""
    torch.manual_seed(0)
    source = build_model(ModelSpec(family, family, config), tokenizer).eval()
    pruned = prune_layers(source, LayerPruning.parse(spec)).eval()
    assert layer_counts(pruned) == counts
    if family == "qwen2":
        assert pruned.config.layer_types == ["sliding_attention", "full_attention"]
    folder = save_model(pruned, tokenizer, tmp_path / "pruned")
    reloaded = build_model(ModelSpec("reloaded", path=str(folder)), tokenizer).eval()
    batch = toy_batches(tokenizer)[0]
    torch.testing.assert_close(target_logits(reloaded, batch), target_logits(pruned, batch))


def test_layers_of_different_layouts_are_refused_not_mixed(tokenizer):
    """A model whose layers differ by position (here Qwen2-MoE: dense MLPs in layers 0-1, experts
    after) cannot be pruned to put an expert layer where a dense one belongs."""
    config = {"hidden_size": 16, "intermediate_size": 32, "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8,
              "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 2, "num_experts": 2,
              "num_experts_per_tok": 1, "mlp_only_layers": [0, 1]}
    source = build_model(ModelSpec("moe", "qwen2_moe", config), tokenizer)
    with pytest.raises(ValueError, match=r"prune.layers: layer 2 of this qwen2_moe model does not have the layout of "
                                         r"layer 0 of the pruned one .* which layer pruning does not support"):
        prune_layers(source, LayerPruning.parse({"keep_layers": [2, 3]}))


@pytest.mark.parametrize("prune, lora, match", [
    (6, None, r"prune: expected a mapping such as \{num_layers: 6\}"),
    ({"keep_layers": 3}, None, r"prune.keep_layers: expected a list of layer indices, got 3"),
    ({"num_layers": "8"}, None, r"prune.num_layers: expected an integer, got '8'"),
    ({"decoder": None}, None, r"prune.decoder: expected a mapping"),
    (None, 16, r"lora: expected a mapping such as \{r: 16, alpha: 32\}, got 16"),
    (None, {"r": "16"}, r"lora.r: expected an integer, got '16'"),
    (None, {"target_modules": None}, r"lora.target_modules: expected all-linear or a list of module names"),
])
def test_malformed_prune_and_lora_settings_name_the_key(prune, lora, match):
    with pytest.raises(ValueError, match=rf"model 'x': {match}"):
        ModelSpec("x", "llama", prune=prune, lora=lora)
