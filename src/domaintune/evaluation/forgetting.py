"""Forgetting check: general-ability probes answered by the base and the tuned model.

Items are multiple choice and scored without generating: each option's log-likelihood after the
question, per character (lm-eval's `acc_norm`, so long options are not penalised), picks the answer.
No generation, and each question's prompt runs once for all its options (once per option under a
prompt-learning adapter), so a few hundred probes cost well under a minute on a CPU.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from domaintune.config import format_validation_error
from domaintune.core.chat import IGNORE_INDEX, render
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.bootstrap import ItemStats, mean_item_stats
from domaintune.models.inference import autocast, example_losses, is_prompt_learning, model_device

BUILTIN = "built-in general probes"
# Fixed and short, so both models see the same prompt whatever the recipe's domain system prompt is.
SYSTEM_PROMPT = "Answer the question."


class Probe(BaseModel):
    # Extra columns (ids, sources) in a user's file are fine.
    model_config = ConfigDict(extra="ignore")

    question: str = Field(min_length=1)
    choices: list[Annotated[str, Field(min_length=1)]] = Field(min_length=2)
    answer: int = Field(ge=0, description="Index of the right choice.")
    category: str = "general"

    @model_validator(mode="after")
    def _answer_is_a_choice(self) -> "Probe":
        if self.answer >= len(self.choices):
            raise ValueError(f"answer {self.answer} is not an index of the {len(self.choices)} choices")
        return self


def load_probes(path: str | None = None) -> tuple[str, list[Probe]]:
    """The probes in a JSONL file (`question`, `choices`, `answer` index, optional `category`), or the built-in set."""
    if path is None:
        text = resources.files("domaintune.evaluation").joinpath("probes/general.jsonl").read_text(encoding="utf-8")
        source = BUILTIN
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DomaintuneError(f"evaluation.probes: can't read {path} ({error})") from None
        source = str(path)
    probes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            probes.append(Probe.model_validate(json.loads(line)))
        except json.JSONDecodeError as error:
            raise DomaintuneError(f"{source} line {number}: not valid JSON ({error.msg})") from None
        except ValidationError as error:
            raise DomaintuneError(f"{source} line {number}: {format_validation_error(error)}") from None
    if not probes:
        raise DomaintuneError(f"evaluation.probes: {source} holds no probes")
    return source, probes


@torch.no_grad()
def option_logprobs(model, tokenizer, prompts: list[str], options: list[list[str]], batch_size: int,
                    bf16: bool) -> list[np.ndarray]:
    """Per prompt, the summed log-probability of each of its options' tokens right after it.

    Each prompt runs once and its key/value cache is copied to every option, so an option costs only
    its own few tokens: the prompts are most of the text, and this is ~3x faster than full sequences.
    Under a prompt-learning adapter each option is scored in its full sequence instead.
    """
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt_ids = [encode(prompt) for prompt in prompts]
    option_ids = [[encode(option) for option in item] for item in options]
    if is_prompt_learning(model):
        # peft drops a soft prompt's position ids and puts a fresh prefix in place of the cache it is handed,
        # so neither the left-padded prompt pass nor the cached option pass below would score what they say.
        return full_sequence_logprobs(model, tokenizer, prompt_ids, option_ids, batch_size, bf16)
    scores = [np.zeros(len(item)) for item in options]
    # Options are right-padded to the longest in their batch: batch items with similar option lengths.
    order = sorted(range(len(prompts)), key=lambda i: (max(map(len, option_ids[i])), len(prompt_ids[i])))
    model.eval()
    device = model_device(model)
    for start in range(0, len(order), batch_size):
        items = order[start : start + batch_size]
        # Prompts left-padded, so every prompt's last token sits in the last column.
        width = max(len(prompt_ids[i]) for i in items)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(prompt_ids[i])) + prompt_ids[i] for i in items],
                                 device=device)
        mask = torch.tensor([[0] * (width - len(prompt_ids[i])) + [1] * len(prompt_ids[i]) for i in items], device=device)
        with autocast(bf16, device):
            prompt_pass = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(prompt_pass.logits[:, -1].float(), dim=-1)  # predicts each option's first token
        # One row per option, right-padded, continuing from a copy of its prompt's cache.
        owner = torch.tensor([row for row, i in enumerate(items) for _ in option_ids[i]], device=device)
        rows = [ids for i in items for ids in option_ids[i]]
        length = max(map(len, rows))
        tokens = torch.tensor([ids + [tokenizer.pad_token_id] * (length - len(ids)) for ids in rows], device=device)
        inside = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in rows], device=device)
        cache = prompt_pass.past_key_values
        cache.batch_select_indices(owner)
        positions = mask.sum(-1)[owner, None] + torch.arange(length, device=device)[None, :]
        with autocast(bf16, device):
            logits = model(input_ids=tokens, attention_mask=torch.cat([mask[owner], inside], dim=-1),
                           position_ids=positions, past_key_values=cache, use_cache=False).logits
        later = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        total = first[owner].gather(-1, tokens[:, :1])[:, 0] + (later * inside[:, 1:]).sum(-1)
        flat = iter(total.tolist())
        for i in items:
            scores[i] = np.array([next(flat) for _ in option_ids[i]])
    return scores


def full_sequence_logprobs(model, tokenizer, prompt_ids: list[list[int]], option_ids: list[list[list[int]]],
                           batch_size: int, bf16: bool) -> list[np.ndarray]:
    """option_logprobs with each option run after its prompt as one sequence: its tokens' summed cross-entropy,
    negated."""
    examples = [{"input_ids": prompt + option, "attention_mask": [1] * (len(prompt) + len(option)),
                 "labels": [IGNORE_INDEX] * len(prompt) + option}
                for prompt, item in zip(prompt_ids, option_ids) for option in item]
    scores = iter(-example_losses(model, tokenizer, examples, batch_size, bf16)[0])
    return [np.array([next(scores) for _ in item]) for item in option_ids]


def probe_prompt(tokenizer, probe: Probe) -> str:
    return render(tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": probe.question}],
                  add_generation_prompt=True)


def answer_probes(model, tokenizer, probes: list[Probe], batch_size: int, bf16: bool) -> np.ndarray:
    """1.0 where the model's most likely option (per character) is the right one, else 0.0; one per probe."""
    prompts = [probe_prompt(tokenizer, probe) for probe in probes]
    scores = option_logprobs(model, tokenizer, prompts, [probe.choices for probe in probes], batch_size, bf16)
    return np.array([
        float(np.argmax(score / np.array([len(choice) for choice in probe.choices])) == probe.answer)
        for probe, score in zip(probes, scores)
    ])


def probe_stats(probes: list[Probe], correct: np.ndarray) -> dict[str, ItemStats]:
    """Accuracy overall and per category, as bootstrap statistics over the probes."""
    stats = {"overall": mean_item_stats(correct)}
    for category in dict.fromkeys(probe.category for probe in probes):
        stats[category] = mean_item_stats([c for c, p in zip(correct, probes) if p.category == category])
    return stats
