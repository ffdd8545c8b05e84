"""GRPO (group relative policy optimisation): for each prompt the policy samples a group of answers,
each is scored by the recipe's rewards (a regex the answer must match, a Python function, a reward
model), and answers better than their group's mean are made more likely, near a frozen reference
(KL weight `beta`). No value model and no preference pairs: any data with prompts works (chat, pairs).
TRL's GRPOTrainer does the work; it logs the mean reward, each source's reward and the KL.
"""
from __future__ import annotations

from domaintune.config.objectives import GrpoConfig
from domaintune.core.errors import DomaintuneError
from domaintune.data.preferences import prompts_of
from domaintune.evaluation.preference import evaluate_policy
from domaintune.evaluation.reward_sources import reward_sources
from domaintune.training import trl_trainer

SUMMARY = "prompts + programmable rewards (regex/format, Python function, reward model) → GRPO; sampled groups, no value model."
Config = GrpoConfig  # the registry and the recipe know an objective by its Config
CURVES = ("reward", "reward_std", "kl", "loss", "completions/mean_length")


def _trl_reward(label: str, source):
    """TRL calls a reward with prompts and completions as message lists; ours take the answer text."""

    def reward(prompts, completions, **_):
        return source(prompts, [c[-1]["content"] if isinstance(c, list) else c for c in completions])

    reward.__name__ = label  # TRL logs each source as rewards/<name>/mean
    return reward


def train(run, resume=False, callbacks=None, console=None) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    recipe = run.recipe()
    config = recipe.objective
    if recipe.training.batch_size % config.num_generations:
        raise DomaintuneError(f"objective.num_generations {config.num_generations} must divide training.batch_size "
                              f"{recipe.training.batch_size}: each batch holds whole groups of answers")
    train_prompts, _ = trl_trainer.split_or_fail(run, lambda rows: [{"prompt": p} for p in prompts_of(rows)])
    # Validating would sample answers for every validation prompt; the logged rewards show progress instead.
    args = trl_trainer.trl_config(GRPOConfig, recipe, run, False, num_generations=config.num_generations,
                                 max_completion_length=config.max_new_tokens, temperature=config.temperature,
                                 beta=config.beta, reward_weights=[spec.weight for spec in config.rewards],
                                 load_best_model_at_end=False)
    rewards = [_trl_reward(f"{index}_{'regex' if spec.regex else 'function' if spec.function else 'model'}", source)
               for index, (spec, source) in enumerate(zip(config.rewards, reward_sources(config.rewards)))]
    return trl_trainer.run_trl(GRPOTrainer, args, run, recipe, resume, console, callbacks, train_prompts, [],
                              reward_funcs=rewards)


def evaluate(run, console=None, harness=None) -> dict:
    return evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
