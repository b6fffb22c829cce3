"""Layer-pruned students: a smaller model made of chosen layers of a larger one.

The way KD4Gen (Calderon et al., ACL 2023) and DistilBART (Shleifer & Rush, 2020, "shrink and
fine-tune") build a student from a pretrained model: keep some of its transformer layers, copy
them with the embeddings, final norm and LM head, and train from there. The student shares the
source's vocabulary by construction, which token-level distillation needs.

    prune: {num_layers: 8}                 # causal LM: 8 layers evenly spaced, first and last kept
    prune: {keep_layers: [0, 10, 20, 29]}  # causal LM: these layers, in this order
    prune: {decoder: {num_layers: 3}}      # encoder-decoder: the decoder (and/or `encoder`)

The pruned model is an ordinary HF model of its architecture with fewer layers (its config says
so), so `save_pretrained` / `from_pretrained` round-trip it like any other.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

# The config fields holding each stack's layer count, in the order they are tried: causal LMs
# (Llama, Qwen, GPT-2 through its attribute map), T5 (`num_layers` / `num_decoder_layers`), BART
# and its kin (`encoder_layers` / `decoder_layers`).
LAYER_COUNT_FIELDS = {
    "layers": ("num_hidden_layers",),
    "encoder": ("encoder_layers", "num_layers"),
    "decoder": ("decoder_layers", "num_decoder_layers"),
}


@dataclass(frozen=True)
class LayerSelection:
    """Which layers of one stack to keep: `keep_layers` (indices, in order) or `num_layers`
    (evenly spaced, the first and the last always kept)."""

    keep_layers: tuple[int, ...] | None = None
    num_layers: int | None = None

    def indices(self, total: int, where: str) -> list[int]:
        if (self.keep_layers is None) == (self.num_layers is None):
            raise ValueError(f"{where}: give exactly one of keep_layers (a list of layer indices) or num_layers")
        if self.num_layers is not None:
            k = self.num_layers
            if not 1 <= k <= total:
                raise ValueError(f"{where}.num_layers={k}: the model has {total} layers; keep 1 to {total}")
            return [0] if k == 1 else [round(i * (total - 1) / (k - 1)) for i in range(k)]
        keep = list(self.keep_layers)
        bad = [i for i in keep if not 0 <= i < total]
        if not keep or bad or len(set(keep)) != len(keep):
            raise ValueError(f"{where}.keep_layers={keep}: expected distinct indices in 0..{total - 1} "
                             f"(the model has {total} layers)" + (f"; out of range: {bad}" if bad else ""))
        return keep


@dataclass(frozen=True)
class LayerPruning:
    """Per stack (`layers` for a causal LM; `encoder` / `decoder` for an encoder-decoder) the
    layers to keep; a stack not named keeps all its layers."""

    stacks: Mapping[str, LayerSelection]

    @classmethod
    def parse(cls, value: Mapping, where: str = "prune") -> LayerPruning:
        """From a config mapping: `{num_layers|keep_layers}` (causal) or `{encoder: ..., decoder: ...}`."""
        value = dict(value)
        selection_keys, stack_keys = {"keep_layers", "num_layers"}, {"encoder", "decoder"}
        unknown = set(value) - selection_keys - stack_keys
        if unknown or not value or (set(value) & selection_keys and set(value) & stack_keys):
            raise ValueError(f"{where}: expected keep_layers or num_layers (a causal LM), or encoder and/or decoder "
                             f"each with one of them (an encoder-decoder); got keys {sorted(value)}")
        if set(value) & selection_keys:
            return cls({"layers": _selection(value, where)})
        return cls({stack: _selection(value[stack], f"{where}.{stack}") for stack in value})


def _selection(value: Mapping, where: str) -> LayerSelection:
    value = dict(value)
    unknown = set(value) - {"keep_layers", "num_layers"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected keep_layers or num_layers)")
    keep = value.get("keep_layers")
    return LayerSelection(tuple(int(i) for i in keep) if keep is not None else None, value.get("num_layers"))


def prune_layers(model: PreTrainedModel, pruning: LayerPruning) -> PreTrainedModel:
    """A new model of the same architecture holding the chosen layers of `model` (which is left
    as it was) with its embeddings, final norm and head."""
    config = copy.deepcopy(model.config)
    stacks = _layer_stacks(model)
    kept: dict[str, list[int]] = {}
    for stack, selection in pruning.stacks.items():
        if stack not in stacks:
            raise ValueError(f"prune.{stack}: a {'encoder-decoder' if model.config.is_encoder_decoder else 'causal'} "
                             f"model has the stacks {sorted(stacks)}" +
                             (" (say which: prune.encoder / prune.decoder)" if stack == "layers" else ""))
        total = len(stacks[stack][1])
        keep = selection.indices(total, f"prune.{stack}" if stack != "layers" else "prune")
        kept[stack] = keep
        _set_layer_count(config, stack, total, keep)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    pruned = auto.from_config(config, dtype=next(model.parameters()).dtype)
    source = model.state_dict()
    prefixes = {stack: stacks[stack][0] for stack in kept}
    state = {key: _source_value(key, source, prefixes, kept) for key in pruned.state_dict()}
    pruned.load_state_dict(state, strict=True)
    pruned.generation_config = copy.deepcopy(model.generation_config)
    return pruned


def _layer_stacks(model: PreTrainedModel) -> dict[str, tuple[str, torch.nn.ModuleList]]:
    """Each stack's (module path, layer list): the outermost ModuleLists of one repeated block
    class (`model.layers`, `transformer.h`, `encoder.block`, `decoder.layers`, ...)."""
    found: dict[str, tuple[str, torch.nn.ModuleList]] = {}
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.ModuleList) and len(module) > 0
                and len({type(m) for m in module}) == 1):
            continue
        if any(name.startswith(other + ".") for other, _ in found.values()):
            continue  # a list inside a layer (T5's sub-layers)
        if model.config.is_encoder_decoder:
            stack = "encoder" if re.search(r"(^|\.)encoder(\.|$)", name) else "decoder" if re.search(
                r"(^|\.)decoder(\.|$)", name) else None
        else:
            stack = "layers"
        if stack is not None and stack not in found:
            found[stack] = (name, module)
    return found


def _set_layer_count(config, stack: str, total: int, keep: list[int]) -> None:
    fields = [f for f in LAYER_COUNT_FIELDS[stack] if getattr(config, f, None) == total]
    if not fields:
        raise ValueError(f"prune.{stack}: cannot find the layer count ({total}) of {config.model_type} in its config "
                         f"(looked at {', '.join(LAYER_COUNT_FIELDS[stack])}); layer pruning does not know this "
                         "architecture")
    setattr(config, fields[0], len(keep))
    layer_types = getattr(config, "layer_types", None)  # per-layer attention kinds (Qwen2, Gemma)
    if stack == "layers" and isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in keep]


def _source_value(key: str, source: dict[str, torch.Tensor], prefixes: dict[str, str],
                  kept: dict[str, list[int]]) -> torch.Tensor:
    """The source tensor for a parameter of the pruned model: layer i of a pruned stack is source
    layer keep[i]. A tensor that only the first layer of a stack has (T5's relative position
    bias lives in block 0) comes from the source's first layer whatever is kept."""
    for stack, prefix in prefixes.items():
        match = re.match(rf"{re.escape(prefix)}\.(\d+)\.(.+)", key)
        if match:
            index, rest = int(match[1]), match[2]
            candidate = f"{prefix}.{kept[stack][index]}.{rest}"
            return source[candidate] if candidate in source else source[f"{prefix}.{index}.{rest}"]
    return source[key]


def layer_counts(model: PreTrainedModel) -> dict[str, int]:
    """Each stack's number of layers (`layers` for a causal LM; `encoder`, `decoder`)."""
    return {stack: len(layers) for stack, (_, layers) in _layer_stacks(model).items()}


def parse_pruning(value: Mapping | LayerPruning | None, where: str = "prune") -> LayerPruning | None:
    if value is None or isinstance(value, LayerPruning):
        return value
    return LayerPruning.parse(value, where)
