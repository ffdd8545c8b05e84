"""LoKr: the weight update is a Kronecker product of a small matrix and a low-rank one (from LyCORIS).

Very few parameters for large layers; merges into the weights on export.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "Kronecker-product updates; the smallest adapters for large layers, e.g. many task variants"
TRAINS = "a Kronecker factor pair per linear layer (one factor low-rank)"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["lokr"] = "lokr"
    r: int = Field(8, ge=1, description="Rank of the low-rank Kronecker factor.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (scale = alpha / r).")
    decompose_both: bool = Field(False, description="Make the small factor low-rank as well.")
    decompose_factor: int = Field(-1, description="Size of the small factor (-1: as square as the layer allows).")
    rank_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    module_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt.")


def apply(model, config: Config):
    from peft import LoKrConfig, TaskType, get_peft_model

    # The recipe's fields carry peft's own names, so they pass straight through.
    return get_peft_model(model, LoKrConfig(task_type=TaskType.CAUSAL_LM, **config.model_dump(exclude={"name"})))
