"""Layer-wise fine-tuning: train chosen blocks or modules, freeze everything else.

Choose the top K transformer blocks (`top_layers`), named modules (`modules`, e.g. `model.norm`
or `lm_head`), a regular expression over parameter names (`pattern`), or any union of them.
The saved model is a full checkpoint (like `full`); the frozen weights are bit-identical to
the base model's.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domaintune.core.errors import DomaintuneError

SUMMARY = "only the top blocks (or named modules); cheap full-weight tuning that keeps the lower layers' general knowledge"
TRAINS = "the top K transformer blocks, named modules or parameters matching a pattern"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["freeze"] = "freeze"
    top_layers: int = Field(2, ge=0, description="Train the last K transformer blocks (0: none).")
    modules: list[str] = Field(
        default_factory=list, description="Module names to train as well, e.g. [model.norm, lm_head]."
    )
    pattern: str | None = Field(None, description="Also train parameters whose name matches this regular expression.")

    @model_validator(mode="after")
    def _something_to_train(self) -> "Config":
        if self.top_layers == 0 and not self.modules and not self.pattern:
            raise ValueError("choose what to train: top_layers > 0, modules or pattern")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ValueError(f"pattern is not a valid regular expression: {error}") from None
        return self


def transformer_blocks(model) -> tuple[str, list]:
    """The name and members of the model's list of transformer blocks (the longest ModuleList)."""
    import torch

    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        raise DomaintuneError("method.top_layers: this model has no list of transformer blocks; use modules or pattern")
    name, blocks = max(lists, key=lambda item: len(item[1]))
    return name, list(blocks)


def trained_parameter_names(model, config: Config) -> set[str]:
    names: set[str] = set()
    modules = dict(model.named_modules())
    if config.top_layers:
        prefix, blocks = transformer_blocks(model)
        if config.top_layers > len(blocks):
            raise DomaintuneError(f"method.top_layers: {config.top_layers} is more than the model's {len(blocks)} blocks")
        for index in range(len(blocks) - config.top_layers, len(blocks)):
            names |= {f"{prefix}.{index}.{name}" for name, _ in blocks[index].named_parameters()}
    for module_name in config.modules:
        if module_name not in modules:
            raise DomaintuneError(f"method.modules: the model has no module '{module_name}'")
        names |= {f"{module_name}.{name}" if module_name else name for name, _ in modules[module_name].named_parameters()}
    if config.pattern:
        matched = {name for name, _ in model.named_parameters() if re.search(config.pattern, name)}
        if not matched:
            raise DomaintuneError(f"method.pattern: '{config.pattern}' matches no parameter name")
        names |= matched
    return names


def apply(model, config: Config):
    trained = trained_parameter_names(model, config)
    # named_parameters() lists a tied weight once, under its first name (the input embeddings),
    # so a tied LM head is reached through the module it belongs to.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if name in trained:
            parameter.requires_grad_(True)
    return model
