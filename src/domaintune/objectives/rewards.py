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
import math
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domaintune.errors import DomaintuneError


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    regex: str | None = Field(None, description="1.0 when the answer matches this regular expression (re.search), else 0.0.")
    function: str | None = Field(None, description="'module:function' or 'file.py:function' returning one float per answer.")
    model: str | None = Field(None, description="A reward model folder, a `reward` run directory, or stage:LABEL.")
    weight: float = Field(1.0, description="Weight of this source in the summed reward.")

    @model_validator(mode="after")
    def _one_source(self) -> "RewardSpec":
        if sum(value is not None for value in (self.regex, self.function, self.model)) != 1:
            raise ValueError("give exactly one of regex, function and model")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @field_validator("function")
    @classmethod
    def _module_and_name(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError("expected 'module:function' or 'file.py:function'")
        return value

    def label(self) -> str:
        return f"regex {self.regex}" if self.regex else f"function {self.function}" if self.function else f"model {self.model}"


class SamplingConfig(BaseModel):
    """What the online objectives (ppo, grpo) share: the rewards and how answers are sampled."""

    model_config = ConfigDict(extra="forbid")

    rewards: list[RewardSpec] = Field(
        min_length=1, description="Reward sources, summed with their weights (a reward model: {model: RUN_DIR or stage:LABEL})."
    )
    max_new_tokens: int = Field(48, ge=1, description="Longest sampled answer.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")


def last_user_turn(prompt: list[dict]) -> str:
    return next((message["content"] for message in reversed(prompt) if message["role"] == "user"), "")


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


def reward_win_rate(specs: list[RewardSpec], rows: list[dict], samples: list[dict], confidence: float) -> dict:
    """Base vs tuned answers to the same held-out prompts, scored by the reward: tuned wins, ties, base wins,
    and the tuned win rate (ties count half) with a Wilson interval."""
    score = reward_function(specs)
    prompts = [row["messages"][:-1] for row in rows]
    base = score(prompts, [sample["base"] for sample in samples])
    tuned = score(prompts, [sample["tuned"] for sample in samples])
    wins = {"tuned": sum(t > b for t, b in zip(tuned, base)), "base": sum(b > t for t, b in zip(tuned, base))}
    wins["tie"] = len(samples) - wins["tuned"] - wins["base"]
    rate = (wins["tuned"] + 0.5 * wins["tie"]) / len(samples)
    return {"by": ", ".join(spec.label() for spec in specs), "items": len(samples), "wins": wins,
            "tuned_win_rate": rate, "interval": wilson_interval(rate, len(samples), confidence),
            "mean_reward": {"base": sum(base) / len(base), "tuned": sum(tuned) / len(tuned)}}


def wilson_interval(rate: float, n: int, confidence: float) -> list[float]:
    """The Wilson score interval of a proportion: sensible at small n and at 0 or 1, unlike rate ± z·se."""
    from statistics import NormalDist

    if n == 0:
        return [0.0, 1.0]
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]
