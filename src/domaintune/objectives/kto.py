"""KTO (Kahneman-Tversky optimisation): learns from answers marked desirable or undesirable, one at a
time, so a thumbs-up/down log works without pairs. Rated answers are desirable at or above
`threshold`; of a pair or ranking, the best answer is desirable and the others are not.
TRL's KTOTrainer (promoted from trl.experimental to trl in 1.16) does the work.
"""
from __future__ import annotations

import random

from domaintune.config.objectives import KtoConfig
from domaintune.data.preferences import kto_examples
from domaintune.evaluation.preference import evaluate_policy
from domaintune.training import trl_trainer

SUMMARY = "answers labelled desirable/undesirable (ratings over a threshold, or pairs) → KTO; no pairs needed."
Config = KtoConfig  # the registry and the recipe know an objective by its Config
CURVES = ("loss", "rewards/chosen", "rewards/rejected", "kl")


def train(run, resume=False, callbacks=None, console=None) -> dict:
    from trl import KTOConfig, KTOTrainer

    recipe = run.recipe()
    config = recipe.objective
    train_rows, validation_rows = trl_trainer.split_or_fail(run, kto_examples, config.threshold)
    # KTO's KL estimate pairs each answer with its neighbour's prompt in a fixed order, so the
    # examples are shuffled once here (seeded) and read sequentially.
    random.Random(recipe.seed).shuffle(train_rows)
    args = trl_trainer.trl_config(KTOConfig, recipe, run, bool(validation_rows), beta=config.beta,
                                 train_sampling_strategy="sequential",
                                 desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight,
                                 max_length=recipe.data.max_tokens)
    return trl_trainer.run_trl(KTOTrainer, args, run, recipe, resume, console, callbacks, train_rows, validation_rows)


def evaluate(run, console=None, harness=None) -> dict:
    return evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
