"""How the model's parameters are adapted. One module per method, registered here by name.

A method module defines `Config` (a pydantic model whose `name` field is a Literal of the
method's name) and `apply(model, config) -> model`, which returns the model ready to train
with only the intended parameters trainable. Adding a method is one module plus one line below.
"""
from __future__ import annotations

from types import ModuleType

from domaintune.methods import full, lora

METHODS: dict[str, ModuleType] = {"lora": lora, "full": full}


def method_config_types() -> tuple[type, ...]:
    return tuple(module.Config for module in METHODS.values())


def get_method(name: str) -> ModuleType:
    return METHODS[name]
