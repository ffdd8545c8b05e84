"""A reward model: the base model with a one-output scoring head, trained on preference pairs so the
chosen answer scores higher than the rejected one (Bradley-Terry loss, TRL's RewardTrainer).

Evaluated by pairwise accuracy on held-out pairs (the share where chosen outscores rejected) and the
mean score margin. model/ holds a complete AutoModelForSequenceClassification (an adapter is merged
in, so PPO, GRPO and evaluation load it with no peft); `rewards: [{model: <run dir>}]` uses it.
"""
from __future__ import annotations

import json

from domaintune.config.objectives import RewardConfig
from domaintune.config.runtime import configure_threads
from domaintune.data.preferences import preference_pairs
from domaintune.evaluation.preference import log_curves
from domaintune.evaluation.preference_report import write_preference_report
from domaintune.evaluation.reward_sources import RewardModel
from domaintune.methods import get_method
from domaintune.models.loading import load_tokenizer
from domaintune.models.registry import resolve_model_path
from domaintune.training import trl_trainer
from domaintune.training.callbacks import run_callbacks
from domaintune.training.checkpoints import atomic_trainer

SUMMARY = "preference pairs → a reward model scoring answers (pairwise accuracy); feeds PPO, GRPO and evaluation."
Config = RewardConfig  # the registry and the recipe know an objective by its Config


def load_scorer(recipe):
    """The base model with a fresh one-output head; LoRA comes back as a peft config for the trainer."""
    import dataclasses

    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(recipe.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(recipe.model.name), num_labels=1, use_safetensors=True,
        revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    method = get_method(recipe.method.name)
    if hasattr(method, "peft_config"):
        # SEQ_CLS makes peft train the new head in full next to the adapter.
        return model, tokenizer, dataclasses.replace(method.peft_config(recipe.method), task_type="SEQ_CLS")
    model = method.apply(model, recipe.method)
    model.score.requires_grad_(True)  # the head is new: it must learn whatever the method trains
    return model, tokenizer, None


def train(run, resume=False, callbacks=None, console=None) -> dict:
    from datasets import Dataset
    from peft import PeftModel
    from rich.console import Console
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    console = console or Console(stderr=True)
    recipe = run.recipe()
    configure_threads(recipe.training)
    set_seed(recipe.seed)  # the head starts random
    train_pairs, validation_pairs = trl_trainer.split_or_fail(run, preference_pairs)
    model, tokenizer, peft_config = load_scorer(recipe)
    args = trl_trainer.trl_config(RewardConfig, recipe, run, bool(validation_pairs), max_length=recipe.data.max_tokens,
                                 center_rewards_coefficient=recipe.objective.center_rewards)
    trainer = atomic_trainer(RewardTrainer)(
        model=model, args=args, train_dataset=Dataset.from_list(train_pairs),
        eval_dataset=Dataset.from_list(validation_pairs) if validation_pairs else None,
        processing_class=tokenizer, peft_config=peft_config,
        callbacks=run_callbacks(run, recipe, console, callbacks, recipe.training.early_stopping if validation_pairs else None),
    )
    # A merged model loads anywhere as a plain AutoModelForSequenceClassification.
    save = (lambda folder: trainer.model.merge_and_unload().save_pretrained(folder)) if isinstance(trainer.model, PeftModel) else None
    return trl_trainer.run_trainer(trainer, run, recipe, resume, console, len(train_pairs), save=save)


def pairwise_accuracy(score, pairs: list[dict]) -> dict:
    """Share of pairs where the chosen answer outscores the rejected one, and the mean margin."""
    prompts = [pair["prompt"] for pair in pairs]
    chosen = score(prompts, [pair["chosen"][0]["content"] for pair in pairs])
    rejected = score(prompts, [pair["rejected"][0]["content"] for pair in pairs])
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"pairs": len(pairs), "accuracy": sum(m > 0 for m in margins) / len(pairs), "mean_margin": sum(margins) / len(pairs)}


def evaluate(run, console=None, harness=None) -> dict:
    run.require_model()
    score = RewardModel(run.model, batch_size=run.recipe().evaluation.batch_size)
    results = {"reward_model": {}}
    for split in ("validation", "test"):
        pairs = preference_pairs(run.read_split(split))
        if pairs:
            results["reward_model"][split] = pairwise_accuracy(score, pairs)
    if console is not None:
        for split, numbers in results["reward_model"].items():
            console.print(f"Reward model on {numbers['pairs']} {split} pairs: pairwise accuracy "
                          f"{numbers['accuracy']:.1%}, mean margin {numbers['mean_margin']:.3f}")
    results["preference"] = {"curves": log_curves(run, ("loss", "accuracy", "margin"))}
    run.eval.mkdir(parents=True, exist_ok=True)
    (run.eval / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    write_preference_report(run)
    return results


def export(run, console=None) -> dict:
    """export/merged: the reward model (already complete in model/) in the recipe's export dtype."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    target = run.export / "merged"
    dtype = torch.bfloat16 if run.recipe().export.dtype == "bfloat16" else torch.float32
    AutoModelForSequenceClassification.from_pretrained(str(run.model), dtype=dtype).save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(run.model)).save_pretrained(str(target))
    if console is not None:
        console.print(f"Exported reward model: {target}")
    return {"merged": str(target)}
