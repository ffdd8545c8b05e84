"""Direct preference optimisation: the policy learns from (prompt, chosen, rejected) pairs directly,
no reward model, kept near a frozen reference (the base; with an adapter, the base with it disabled).

Training logs the implicit rewards of the chosen and rejected answers and their margin
(`rewards/margins`); the report plots it. TRL's DPOTrainer does the work.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domaintune.objectives import preference
from domaintune.objectives.rewards import RewardSpec

SUMMARY = "preference pairs (pairwise, ranking, rating) → direct preference optimisation against a frozen reference; no reward model."
CURVES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model (KL weight).")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description="DPO's loss; ipo is less prone to overfitting.")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Optional: score base vs tuned answers in evaluation.")


def train(run, resume=False, callbacks=None, console=None) -> dict:
    from trl import DPOConfig, DPOTrainer

    from domaintune.data.preferences import preference_pairs

    recipe = run.recipe()
    train_pairs, validation_pairs = preference.split_or_fail(run, preference_pairs)
    args = preference.trl_config(DPOConfig, recipe, run, bool(validation_pairs), beta=recipe.objective.beta,
                                 loss_type=[recipe.objective.loss_type], max_length=recipe.data.max_tokens)
    return preference.run_trl(DPOTrainer, args, run, recipe, resume, console, callbacks, train_pairs, validation_pairs)


def evaluate(run, console=None, harness=None) -> dict:
    return preference.evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
