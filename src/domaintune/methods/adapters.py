"""Bottleneck adapters (Houlsby / Pfeiffer): small down-/up-projection layers inserted in each block.

Each adapter maps the sub-layer's output h to h + up(act(down(h))), with `up` starting at zero
so the adapted model starts out identical to the base model. `pfeiffer` places one adapter after
each block's feed-forward network, `houlsby` one after the attention as well. The base weights
stay frozen.

AdapterHub's `adapters` package pins an older transformers, so this is a small module of our own:
the adapters are child modules of the sub-layers they follow (so Trainer checkpoints hold them and
`--resume` restores them) applied by a forward hook. The artifact is `bottleneck_adapter.json`
(the config) plus `bottleneck_adapter.safetensors` (the adapter weights only); `load_trained`
rebuilds the adapted model from a base model and that folder. The non-linearity means adapters
can't be merged into the weights, so `export` writes the adapter only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domaintune.core.errors import DomaintuneError

SUMMARY = "bottleneck layers inserted in every block; a modular add-on, independent of the linear-layer layout"
TRAINS = "a down-/up-projection pair after each block's feed-forward (and attention, houlsby)"
MERGEABLE = False
NOT_MERGEABLE_BECAUSE = "bottleneck adapters are non-linear (down projection, activation, up projection)"
ARTIFACT_CONFIG = "bottleneck_adapter.json"
ARTIFACT_WEIGHTS = "bottleneck_adapter.safetensors"
ARTIFACT_FILES = (ARTIFACT_CONFIG, ARTIFACT_WEIGHTS)
CHILD_NAME = "bottleneck_adapter"
DEFAULT_TARGETS = {"pfeiffer": ["mlp"], "houlsby": ["self_attn", "mlp"]}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["adapters"] = "adapters"
    style: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer", description="pfeiffer: after the feed-forward network; houlsby: after attention and feed-forward."
    )
    reduction_factor: int = Field(16, ge=1, description="Bottleneck size = hidden size / reduction_factor.")
    activation: Literal["relu", "gelu", "silu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(
        None, description="Sub-layer names inside each block to follow with an adapter; null: from style "
        "(mlp; self_attn + mlp)."
    )


def _targets(config: Config) -> list[str]:
    return config.targets or DEFAULT_TARGETS[config.style]


def insert(model, config: Config):
    """Add adapters after the target sub-layers of every transformer block (in place)."""
    from domaintune.methods._bottleneck import BottleneckAdapter, adapt_output
    from domaintune.methods.freeze import transformer_blocks

    hidden = model.config.get_text_config().hidden_size
    bottleneck = max(1, hidden // config.reduction_factor)
    prefix, blocks = transformer_blocks(model)
    dtype = next(model.parameters()).dtype
    for index, block in enumerate(blocks):
        children = dict(block.named_modules())
        for target in _targets(config):
            if target not in children:
                raise DomaintuneError(
                    f"method.targets: block {prefix}.{index} has no sub-layer '{target}' "
                    f"(it has: {', '.join(name for name, _ in block.named_children())})"
                )
            sublayer = children[target]
            sublayer.add_module(CHILD_NAME, BottleneckAdapter(hidden, bottleneck, config.activation, config.dropout).to(dtype))
            sublayer.register_forward_hook(adapt_output)
    model.domaintune_adapters = config
    return model


def adapter_state(model) -> dict:
    return {name: tensor for name, tensor in model.state_dict().items() if f".{CHILD_NAME}." in name}


def apply(model, config: Config):
    model.requires_grad_(False)
    insert(model, config)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(f".{CHILD_NAME}." in name)
    return model


def save_trained(model, folder: Path) -> None:
    """Write the adapter config and weights (only the adapters) to folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.domaintune_adapters
    base = getattr(model, "name_or_path", None)
    (folder / ARTIFACT_CONFIG).write_text(
        json.dumps({"method": "adapters", "config": config.model_dump(), "base_model_name_or_path": base}, indent=2),
        encoding="utf-8",
    )
    save_file({k: v.detach().contiguous() for k, v in adapter_state(model).items()}, str(folder / ARTIFACT_WEIGHTS))


def load_trained(base_model, folder: Path):
    """The base model with the saved adapters inserted and loaded."""
    from safetensors.torch import load_file

    folder = Path(folder)
    saved = json.loads((folder / ARTIFACT_CONFIG).read_text(encoding="utf-8"))
    model = insert(base_model, Config.model_validate(saved["config"]))
    weights = load_file(str(folder / ARTIFACT_WEIGHTS))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [name for name in missing if f".{CHILD_NAME}." in name]
    if missing or unexpected:
        raise DomaintuneError(
            f"{folder / ARTIFACT_WEIGHTS}: adapter weights don't fit this base model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    dtype = next(base_model.parameters()).dtype
    return model.to(dtype)
