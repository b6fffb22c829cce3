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
        value = _mapping(value, where)
        selection_keys, stack_keys = {"keep_layers", "num_layers"}, {"encoder", "decoder"}
        unknown = set(value) - selection_keys - stack_keys
        if unknown or not value or (set(value) & selection_keys and set(value) & stack_keys):
            raise ValueError(f"{where}: expected keep_layers or num_layers (a causal LM), or encoder and/or decoder "
                             f"each with one of them (an encoder-decoder); got keys {sorted(value)}")
        if set(value) & selection_keys:
            return cls({"layers": _selection(value, where)})
        return cls({stack: _selection(value[stack], f"{where}.{stack}") for stack in value})


def _mapping(value, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping such as {{num_layers: 6}} or {{keep_layers: [0, 10, 20, 29]}}, "
                         f"got {value!r}")
    return dict(value)


def _selection(value: Mapping, where: str) -> LayerSelection:
    value = _mapping(value, where)
    unknown = set(value) - {"keep_layers", "num_layers"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected keep_layers or num_layers)")
    keep, count = value.get("keep_layers"), value.get("num_layers")
    if keep is not None and (isinstance(keep, (str, Mapping)) or not hasattr(keep, "__iter__")
                             or not all(isinstance(i, int) and not isinstance(i, bool) for i in keep)):
        raise ValueError(f"{where}.keep_layers: expected a list of layer indices, got {keep!r}")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
        raise ValueError(f"{where}.num_layers: expected an integer, got {count!r}")
    return LayerSelection(tuple(keep) if keep is not None else None, count)


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
    # Not the source's folder: a pruned model is another model (caches keyed on it must differ).
    config._name_or_path = ""
    pruned = auto.from_config(config, dtype=next(model.parameters()).dtype)
    pruned_stacks = _layer_stacks(pruned)
    state = {}
    for stack, keep in kept.items():
        prefix, layers = stacks[stack]
        state.update(_kept_layers_state(prefix, layers, pruned_stacks[stack][1], keep, f"prune.{stack}",
                                        model.config.model_type))
    source = model.state_dict()
    state.update({key: source[key] for key in pruned.state_dict() if key not in state})  # embeddings, norm, head
    pruned.load_state_dict(state, strict=True)
    pruned.generation_config = copy.deepcopy(model.generation_config)
    return pruned


def _kept_layers_state(prefix: str, layers: torch.nn.ModuleList, new_layers: torch.nn.ModuleList, keep: list[int],
                       where: str, model_type: str) -> dict[str, torch.Tensor]:
    """The state of the pruned stack: its layer i is source layer keep[i]. Layers must have one
    layout, except for tensors only the first layer has (T5's relative position bias lives in
    block 0): the new first layer takes them from the source's first layer, and a source first
    layer kept further down leaves them behind."""
    source = [layer.state_dict() for layer in layers]
    first_only = set(source[0]) - set().union(*map(set, source[1:])) if len(source) > 1 else set()
    state = {}
    for i, (old, new_layer) in enumerate(zip(keep, new_layers, strict=True)):
        wanted, have = set(new_layer.state_dict()), set(source[old])
        lacking, extra = wanted - have, have - wanted
        if not (lacking <= (first_only if i == 0 else set()) and extra <= first_only):
            raise ValueError(f"{where}: layer {old} of this {model_type} model does not have the layout of layer {i} "
                             f"of the pruned one (differs in {sorted(lacking | extra)[:3]}): its layers differ by "
                             "position (mixture-of-experts or hybrid layouts), which layer pruning does not support")
        for name in wanted:
            state[f"{prefix}.{i}.{name}"] = source[old][name] if name in have else source[0][name]
    return state


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
    if stack == "layers":  # per-layer settings (Qwen2's and Gemma's layer_types, ...) follow their layers
        for name, value in list(vars(config).items()):
            if isinstance(value, list) and len(value) == total and not name.startswith("_"):
                setattr(config, name, [value[i] for i in keep])


def layer_counts(model: PreTrainedModel) -> dict[str, int]:
    """Each stack's number of layers (`layers` for a causal LM; `encoder`, `decoder`)."""
    return {stack: len(layers) for stack, (_, layers) in _layer_stacks(model).items()}


def parse_pruning(value: Mapping | LayerPruning | None, where: str = "prune") -> LayerPruning | None:
    if value is None or isinstance(value, LayerPruning):
        return value
    return LayerPruning.parse(value, where)
