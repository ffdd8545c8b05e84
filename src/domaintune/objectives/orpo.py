"""ORPO (odds-ratio preference optimisation): SFT on the chosen answers plus a penalty on the odds of
the rejected ones, in one stage and without a reference model (half DPO's forward passes).
TRL's experimental ORPOTrainer does the work.
"""
from __future__ import annotations

from domaintune.config.objectives import OrpoConfig
from domaintune.data.preferences import preference_pairs
from domaintune.evaluation.preference import evaluate_policy
from domaintune.training import trl_trainer

SUMMARY = "preference pairs → SFT on the chosen answer plus an odds-ratio penalty on the rejected; no reference model."
Config = OrpoConfig  # the registry and the recipe know an objective by its Config
CURVES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "log_odds_ratio", "nll_loss")


def train(run, resume=False, callbacks=None, console=None) -> dict:
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # chosen knowingly: ORPO lives only in trl.experimental
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    recipe = run.recipe()
    train_pairs, validation_pairs = trl_trainer.split_or_fail(run, preference_pairs)
    args = trl_trainer.trl_config(ORPOConfig, recipe, run, bool(validation_pairs), beta=recipe.objective.beta,
                                 max_length=recipe.data.max_tokens)
    return trl_trainer.run_trl(ORPOTrainer, args, run, recipe, resume, console, callbacks, train_pairs, validation_pairs)


def evaluate(run, console=None, harness=None) -> dict:
    return evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
