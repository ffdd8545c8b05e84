"""IA3: learned scaling vectors on the keys, values and feed-forward activations.

Fewer parameters than LoRA (one vector per adapted layer), a multiplicative change only;
merges into the weights on export. Needs a higher learning rate than LoRA (~1e-2 and up).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "per-channel scaling vectors; the fewest parameters of the weight methods, for small data and many tasks"
TRAINS = "one scaling vector per key, value and feed-forward down projection"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(
        None, description="Modules to scale; null: peft's choice for the architecture (keys, values, FFN down projection)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward (scaled at their input); null: peft's choice."
    )


def apply(model, config: Config):
    from peft import IA3Config, TaskType, get_peft_model

    peft_config = IA3Config(
        task_type=TaskType.CAUSAL_LM,
        target_modules=config.target_modules,
        feedforward_modules=config.feedforward_modules,
    )
    return get_peft_model(model, peft_config)
