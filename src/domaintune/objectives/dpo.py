"""Direct preference optimisation: the policy learns from (prompt, chosen, rejected) pairs directly,
no reward model, kept near a frozen reference (the base; with an adapter, the base with it disabled).

Training logs the implicit rewards of the chosen and rejected answers and their margin
(`rewards/margins`); the report plots it. TRL's DPOTrainer does the work.
"""
from __future__ import annotations

from domaintune.config.objectives import DpoConfig
from domaintune.data.preferences import preference_pairs
from domaintune.evaluation.preference import evaluate_policy
from domaintune.training import trl_trainer

SUMMARY = "preference pairs (pairwise, ranking, rating) → direct preference optimisation against a frozen reference; no reward model."
Config = DpoConfig  # the registry and the recipe know an objective by its Config
CURVES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def train(run, resume=False, callbacks=None, console=None) -> dict:
    from trl import DPOConfig, DPOTrainer

    recipe = run.recipe()
    train_pairs, validation_pairs = trl_trainer.split_or_fail(run, preference_pairs)
    args = trl_trainer.trl_config(DPOConfig, recipe, run, bool(validation_pairs), beta=recipe.objective.beta,
                                 loss_type=[recipe.objective.loss_type], max_length=recipe.data.max_tokens)
    return trl_trainer.run_trl(DPOTrainer, args, run, recipe, resume, console, callbacks, train_pairs, validation_pairs)


def evaluate(run, console=None, harness=None) -> dict:
    return evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
