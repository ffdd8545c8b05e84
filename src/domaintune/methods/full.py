"""Full fine-tuning: every parameter is trained."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SUMMARY = "every weight; the most capacity, for large data sets or big shifts in behaviour, at the most memory"
TRAINS = "all parameters"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["full"] = "full"


def apply(model, config: Config):
    model.requires_grad_(True)
    return model
