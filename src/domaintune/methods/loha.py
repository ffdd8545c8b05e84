"""LoHa: the weight update is a Hadamard product of two low-rank products (from LyCORIS).

Higher effective rank than LoRA for the same parameter count; merges into the weights on export.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "Hadamard product of two low-rank updates; more expressive than LoRA at the same size"
TRAINS = "two pairs of low-rank matrices per linear layer, multiplied element-wise"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["loha"] = "loha"
    r: int = Field(8, ge=1, description="Rank of each low-rank factor.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (scale = alpha / r).")
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout over the rank dimension while training.")
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Probability of skipping a layer's update while training.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt.")


def apply(model, config: Config):
    from peft import LoHaConfig, TaskType, get_peft_model

    # The recipe's fields carry peft's own names, so they pass straight through.
    return get_peft_model(model, LoHaConfig(task_type=TaskType.CAUSAL_LM, **config.model_dump(exclude={"name"})))
