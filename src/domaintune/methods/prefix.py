"""Prefix tuning: learned key/value vectors prepended to every attention layer.

The model's weights don't change at all; the adapter is a few virtual tokens' worth of keys and
values per layer. It can't be merged into the weights, so `export` writes the adapter only.
Packed batches are turned off for it (the prefix needs per-row attention masks; peft drops
position ids), so training uses padded batches.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "learned key/value prefixes in every layer; weights untouched, one tiny file per task"
TRAINS = "virtual-token keys and values for every attention layer"
PACKING = False  # virtual tokens are prepended per row: the padding-free packed engine can't express them
MERGEABLE = False


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(16, ge=1, description="Length of the learned prefix.")
    projection: bool = Field(
        False, description="Train the prefix through a two-layer MLP (more stable, more parameters while training)."
    )
    projection_hidden_size: int = Field(256, ge=1, description="Hidden size of that MLP.")


def apply(model, config: Config):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    peft_config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=config.num_virtual_tokens,
        prefix_projection=config.projection,
        encoder_hidden_size=config.projection_hidden_size,
    )
    return get_peft_model(model, peft_config)
