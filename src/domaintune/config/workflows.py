"""The recipe's sections for runs built from runs: `tune` (a search space), `compare` (method variants)
and `stages` (a curriculum)."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from domaintune.config.base import Section
from domaintune.config.methods import MethodConfig


class _RangeParam(Section):
    @model_validator(mode="after")
    def _low_below_high(self) -> "_RangeParam":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (learning rates).")

    @model_validator(mode="after")
    def _positive_for_log(self) -> "FloatParam":
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class IntParam(_RangeParam):
    type: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)


class CategoricalParam(Section):
    type: Literal["categorical"] = "categorical"
    choices: list[bool | int | float | str | None] = Field(min_length=1)


SEARCH_PARAM_TYPES = (FloatParam, IntParam, CategoricalParam)
SearchParam = Annotated[Union[SEARCH_PARAM_TYPES], Field(discriminator="type")]


class TuneConfig(Section):
    trials: int = Field(8, ge=1, description="Trials per `domaintune tune` call; a re-run adds this many more.")
    storage: str | None = Field(
        None, description="Optuna storage URL; default sqlite:///<output_dir>/<name>-tune.db, so a study resumes."
    )
    study_name: str | None = Field(None, description="Study name in the storage; default: the recipe name.")
    seed: int | None = Field(None, description="Sampler seed; default: the recipe seed.")
    pruner: Literal["median", "none"] = Field(
        "median", description="'median' stops a trial whose validation loss is above the median of earlier trials."
    )
    space: dict[str, SearchParam] = Field(
        default_factory=dict,
        description="Dotted recipe key -> distribution. Empty: training.lr (log scale around the recipe's lr) "
        "and, for LoRA, method.r in {8, 16, 32}.",
    )


class CompareVariant(Section):
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Name in the table and run names; default: the method name.")
    method: MethodConfig
    lr: float | None = Field(None, gt=0, description="training.lr for this variant (e.g. higher for ia3, prefix, prompt).")


class CompareConfig(Section):
    variants: list[CompareVariant] = Field(min_length=2, description="The methods `domaintune compare` trains on the same data.")


class StageConfig(Section):
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Stage name in run names; default stageN.")
    data: dict[str, Any] = Field(default_factory=dict, description="Keys of the data section that differ in this stage.")
    objective: dict[str, Any] | None = Field(None, description="This stage's objective block (replaces the recipe's).")
    method: dict[str, Any] | None = Field(None, description="This stage's method block (replaces the recipe's).")
    training: dict[str, Any] = Field(default_factory=dict, description="Keys of the training section that differ.")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="Keys of the evaluation section that differ.")

