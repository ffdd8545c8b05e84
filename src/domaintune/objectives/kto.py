"""KTO (Kahneman-Tversky optimisation): learns from answers marked desirable or undesirable, one at a
time, so a thumbs-up/down log works without pairs. Rated answers are desirable at or above
`threshold`; of a pair or ranking, the best answer is desirable and the others are not.
TRL's KTOTrainer (promoted from trl.experimental to trl in 1.16) does the work.
"""
from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from domaintune.objectives import preference
from domaintune.objectives.rewards import RewardSpec

SUMMARY = "answers labelled desirable/undesirable (ratings over a threshold, or pairs) → KTO; no pairs needed."
CURVES = ("loss", "rewards/chosen", "rewards/rejected", "kl")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model.")
    threshold: float = Field(3.0, description="A rated answer is desirable when its score is at least this.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of desirable answers (raise it when they are rarer).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable answers.")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Optional: score base vs tuned answers in evaluation.")


def train(run, resume=False, callbacks=None, console=None) -> dict:
    from trl import KTOConfig, KTOTrainer

    from domaintune.data.preferences import kto_examples

    recipe = run.recipe()
    config = recipe.objective
    train_rows, validation_rows = preference.split_or_fail(run, kto_examples, config.threshold)
    # KTO's KL estimate pairs each answer with its neighbour's prompt in a fixed order, so the
    # examples are shuffled once here (seeded) and read sequentially.
    random.Random(recipe.seed).shuffle(train_rows)
    args = preference.trl_config(KTOConfig, recipe, run, bool(validation_rows), beta=config.beta,
                                 train_sampling_strategy="sequential",
                                 desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight,
                                 max_length=recipe.data.max_tokens)
    return preference.run_trl(KTOTrainer, args, run, recipe, resume, console, callbacks, train_rows, validation_rows)


def evaluate(run, console=None, harness=None) -> dict:
    return preference.evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
