"""LoRA students (Hu et al., ICLR 2022) through `peft`: the base weights stay frozen and only
low-rank adapters train, as in KID's experiments (BalDistill trains QLoRA adapters).

    student.lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}

Only adapter parameters reach the optimiser; checkpoints hold just what trains (the frozen base
is rebuilt from the model config on resume); the saved `model/` is the base with the adapters
merged in, so a later run loads it by `path` as a plain model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter settings.

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter's input.
        target_modules: module names to adapt, or `all-linear` (every linear layer but the LM head).
    """

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    @classmethod
    def parse(cls, value: Mapping | LoraSpec | None, where: str = "lora") -> LoraSpec | None:
        if value is None or isinstance(value, LoraSpec):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping such as {{r: 16, alpha: 32}}, got {value!r}")
        value = dict(value)
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected {', '.join(sorted(known))})")
        for key, kinds, expected in (("r", (int,), "an integer"), ("alpha", (int, float), "a number"),
                                     ("dropout", (int, float), "a number")):
            if key in value and (not isinstance(value[key], kinds) or isinstance(value[key], bool)):
                raise ValueError(f"{where}.{key}: expected {expected}, got {value[key]!r}")
        targets = value.get("target_modules", cls.target_modules)
        if isinstance(targets, str):
            pass
        elif isinstance(targets, Sequence) and targets and all(isinstance(t, str) for t in targets):
            value["target_modules"] = tuple(targets)
        else:
            raise ValueError(f"{where}.target_modules: expected all-linear or a list of module names, got {targets!r}")
        spec = cls(**value)
        if spec.r < 1:
            raise ValueError(f"{where}.r={spec.r}: the rank must be at least 1")
        return spec


def add_lora(model: PreTrainedModel, spec: LoraSpec) -> PeftModel:
    """`model` with LoRA adapters on `spec.target_modules`; every other parameter is frozen."""
    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(task_type=task, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=targets)
    return get_peft_model(model, config)


def merged(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The plain model: adapters merged into the base weights (a model without adapters as is).

    Merged in float32: a bfloat16 base would round small adapter updates away (its resolution is
    ~4e-3 relative), so the merged model, and the saved one, would not be the model trained."""
    if not isinstance(model, PeftModel):
        return model
    return model.float().merge_and_unload()


def trainable_state_keys(model, prefix: str = "") -> Sequence[str]:
    """State-dict keys of the parameters that train (with `prefix`, as a parent module names them)."""
    return [prefix + name for name, p in model.named_parameters() if p.requires_grad]
