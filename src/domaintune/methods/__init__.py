"""How the model's parameters are adapted. One module per method, registered here by name.

A method module defines `Config` (a pydantic model whose `name` field is a Literal of the
method's name) and `apply(model, config) -> model`, which returns the model ready to train
with only the intended parameters trainable. Adding a method is one module plus one line below.

Optional module-level hooks, each with a default, so the runner never asks for a method by name:

- `SUMMARY`, `TRAINS`: one line each on when to use it and what it trains (`domaintune methods`).
- `load_kwargs(config) -> dict`: extra `from_pretrained` arguments for the base model (qlora: 4-bit).
- `PACKING = False`: the method can't use the padding-free packed engine (virtual tokens shift
  positions), so training falls back to padded batches.
- `MERGEABLE = False`: the trained artifact can't be folded into the weights; export writes the adapter only.
- `ARTIFACT_FILES`, `save_trained(model, folder)`, `load_trained(base_model, folder)`: a method whose
  artifact is neither a peft adapter nor a full model saves and loads it itself; `ARTIFACT_FILES[0]`
  marks a folder as holding it.
- `OBJECTIVES`: the only objectives the method works with (head: classify); `meta_model(config)`:
  the model `domaintune methods` sizes it on, when that is not the plain causal LM.
"""
from __future__ import annotations

import logging
from types import ModuleType

from domaintune.methods import adapters, freeze, full, head, ia3, loha, lokr, lora, prefix, prompt, qlora

METHODS: dict[str, ModuleType] = {
    "lora": lora,
    "full": full,
    "freeze": freeze,
    "qlora": qlora,
    "ia3": ia3,
    "prefix": prefix,
    "prompt": prompt,
    "loha": loha,
    "lokr": lokr,
    "adapters": adapters,
    "head": head,
}


# bitsandbytes (imported by peft) tries to fetch an optional CPU kernel from the Hugging Face hub
# and warns on every import when it can't; its own kernels work without it (measured: qlora trains).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def method_config_types() -> tuple[type, ...]:
    return tuple(module.Config for module in METHODS.values())


def get_method(name: str) -> ModuleType:
    return METHODS[name]


def load_kwargs(config) -> dict:
    """Extra base-model loading arguments the method needs ({} for most)."""
    hook = getattr(get_method(config.name), "load_kwargs", None)
    return hook(config) if hook else {}


def supports_packing(config) -> bool:
    return getattr(get_method(config.name), "PACKING", True)


def own_artifact_method(folder) -> ModuleType | None:
    """The method whose own artifact files (not peft's, not a full model) are in folder, if any."""
    from pathlib import Path

    for module in METHODS.values():
        files = getattr(module, "ARTIFACT_FILES", None)
        if files and (Path(folder) / files[0]).exists():
            return module
    return None
