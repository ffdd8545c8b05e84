"""Reward sources for PPO, GRPO and the evaluation of preference-tuned models.

A recipe lists them as `rewards:`, each one of
- `{regex: '^\\[.*\\]$'}`: 1.0 when the answer matches (re.search, so anchor it), else 0.0;
- `{function: 'package.module:name'}` or `{function: 'path/to/file.py:name'}`: a Python function
  `name(prompts: list[str], completions: list[str]) -> list[float]` (prompt = the last user turn);
- `{model: PATH}`: a reward model (a `reward` run's model/ folder, a run directory, or `stage:LABEL`
  for an earlier stage of the same recipe), scoring the whole conversation;
with an optional `weight` (default 1). Several sources add up, weighted.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

from domaintune.config.objectives import RewardSpec
from domaintune.core.chat import last_user_turn
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.win_rate import win_summary


def regex_reward(pattern: str):
    compiled = re.compile(pattern)
    return lambda prompts, completions: [float(compiled.search(text.strip()) is not None) for text in completions]


def python_reward(reference: str):
    """The function named by 'module:function' or 'path/file.py:function'."""
    module_name, name = reference.split(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or not path.exists():
                raise FileNotFoundError(path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as error:
        raise DomaintuneError(f"rewards.function {reference!r}: cannot import {module_name} ({error})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise DomaintuneError(f"rewards.function {reference!r}: {module_name} has no function {name!r}")

    def reward(prompts: list[list[dict]], completions: list[str]) -> list[float]:
        scores = [float(score) for score in function([last_user_turn(p) for p in prompts], completions)]
        if len(scores) != len(completions):
            raise DomaintuneError(f"rewards.function {reference!r} returned {len(scores)} scores for {len(completions)} answers")
        return scores

    return reward


def reward_model_folder(reference: str) -> Path:
    """A reward model's folder from a model folder or a `reward` run directory."""
    if reference.startswith("stage:"):
        raise DomaintuneError(f"rewards.model {reference!r}: stage references work inside a recipe's `stages` only")
    path = Path(reference)
    folder = path / "model" if (path / "recipe.yaml").exists() else path
    if not (folder / "config.json").exists():
        raise DomaintuneError(f"rewards.model {reference!r}: no reward model there (expected a `reward` run or its model/ folder)")
    return folder


class RewardModel:
    """A sequence-scoring model: one scalar per (prompt, answer) conversation, higher is better."""

    def __init__(self, folder: str | Path, batch_size: int = 8):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True).eval()
        self.batch_size = batch_size

    def __call__(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        import torch

        texts = [self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
                 for prompt, completion in zip(prompts, completions)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=1024, add_special_tokens=False)
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def reward_sources(specs: list[RewardSpec]) -> list:
    """One callable (prompts as message lists, completions as text) -> scores, per spec, in order."""
    if not specs:
        raise DomaintuneError("objective.rewards: list at least one reward (regex, function or model)")
    return [regex_reward(spec.regex) if spec.regex is not None else python_reward(spec.function)
            if spec.function is not None else RewardModel(reward_model_folder(spec.model)) for spec in specs]


def reward_function(specs: list[RewardSpec]):
    """One callable (prompts as message lists, completions as text) -> the weighted sum of all sources."""
    parts = list(zip((spec.weight for spec in specs), reward_sources(specs)))

    def total(prompts: list[list[dict]], completions: list[str]) -> list[float]:
        sums = [0.0] * len(completions)
        for weight, source in parts:
            sums = [value + weight * score for value, score in zip(sums, source(prompts, completions))]
        return sums

    return total


def reward_win_rate(specs: list[RewardSpec], samples: list[dict], confidence: float) -> dict:
    """Base vs tuned answers to the same held-out prompts (eval/samples.jsonl, each with the prompt turns it
    answered), scored by the reward: tuned wins, ties, base wins, and the tuned win rate (ties count half)
    with a Wilson interval."""
    score = reward_function(specs)
    prompts = [sample["prompt_messages"] for sample in samples]
    base = score(prompts, [sample["base"] for sample in samples])
    tuned = score(prompts, [sample["tuned"] for sample in samples])
    wins = {"tuned": sum(t > b for t, b in zip(tuned, base)), "base": sum(b > t for t, b in zip(tuned, base))}
    wins["tie"] = len(samples) - wins["tuned"] - wins["base"]
    return {"by": ", ".join(spec.label() for spec in specs), **win_summary(wins, confidence),
            "mean_reward": {"base": sum(base) / len(base), "tuned": sum(tuned) / len(tuned)}}
