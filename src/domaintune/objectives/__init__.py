"""What the model learns from. One module per objective, registered here by name; the recipe's
`objective.name` picks it. Adding an objective is one module plus one line below.

An objective module defines `Config` (a pydantic model whose `name` field is a Literal of the
objective's name) and `SUMMARY` (one line on when to use it). Everything else is an optional hook,
each with a default, so the runner never asks for an objective by name:

- `after_prepare(data_dir, config)`: rewrite the prepared splits once after `data prepare` (instruct).
- `encode_rows(tokenizer, rows, max_length, config) -> list[dict]`: the split's training examples
  for the causal-LM trainer (pretrain packs blocks). Default: one example per row, its shape picking
  the encoding: conversations (`messages`) train with SFT, raw documents (`text`) with causal LM.
- `DOMAIN_PERPLEXITY = True`: the runner measures perplexity on the validation examples before and after.
- `train(run, resume, callbacks, console) -> dict`, `evaluate(run, console, harness) -> dict`,
  `export(run, console) -> dict`: an objective that is not causal-LM training on token labels
  (a classification head, an embedding model, preference optimisation) brings its own trainer,
  evaluation and export; the defaults are the causal-LM ones in training/, evaluation/ and export/.
- `prepare(recipe, run, prepare_one) -> card`: prepare the data itself, calling `prepare_one(data_config,
  folder)` (the normal pipeline) per part (multitask); `resolve_paths(config, resolve)`: make the
  objective's own data paths absolute against the recipe's folder.
- `METHODS`: the only methods the objective trains with (classify: head).
"""
from __future__ import annotations

from types import ModuleType
from typing import get_args

from domaintune.objectives import (
    causal_lm, classify, contrastive, dpo, fewshot, grpo, instruct, kto, multitask, orpo, ppo, pretrain, reward, sft,
)

OBJECTIVES: dict[str, ModuleType] = {
    "sft": sft,
    "pretrain": pretrain,
    "instruct": instruct,
    "classify": classify,
    "contrastive": contrastive,
    "fewshot": fewshot,
    "multitask": multitask,
    "dpo": dpo,
    "kto": kto,
    "orpo": orpo,
    "reward": reward,
    "grpo": grpo,
    "ppo": ppo,
}


def objective_config_types() -> tuple[type, ...]:
    return tuple(module.Config for module in OBJECTIVES.values())


def objective_names(config_type: type) -> tuple[str, ...]:
    """The names a Config answers to (sft answers to `auto` too)."""
    return get_args(config_type.model_fields["name"].annotation)


def get_objective(name: str) -> ModuleType:
    return next(module for module in OBJECTIVES.values() if name in objective_names(module.Config))


def hook(config, name: str):
    """The objective's own hook `name`, or None where the default applies."""
    return getattr(get_objective(config.name), name, None)


def encode_row(tokenizer, row: dict, max_length: int) -> dict:
    objective = sft if "messages" in row else causal_lm
    return objective.encode(tokenizer, row, max_length)


def encode_rows(tokenizer, rows: list[dict], max_length: int, objective=None) -> list[dict]:
    """A split's training examples: one per row, or what the objective's own `encode_rows` makes.

    A row whose assistant turn was cut off entirely by truncation teaches nothing and is left out."""
    own = hook(objective, "encode_rows") if objective is not None else None
    encoded = own(tokenizer, rows, max_length, objective) if own else [encode_row(tokenizer, row, max_length) for row in rows]
    return [row for row in encoded if any(label != -100 for label in row["labels"])]


def after_prepare(data_dir, recipe) -> None:
    """Objective-specific rewriting of the prepared splits (instruct)."""
    own = hook(recipe.objective, "after_prepare")
    if own:
        own(data_dir, recipe.objective)


def count_tokens(tokenizer, row: dict) -> int:
    """Token length of a row as training sees it (untruncated). A tokenizer without a chat template
    (an encoder's, for classify/fewshot/contrastive) sees a conversation's turns as plain text."""
    if "messages" in row and tokenizer.chat_template is None:
        return len(tokenizer("\n".join(m["content"] for m in row["messages"]))["input_ids"])
    if "messages" in row:
        return len(tokenizer(sft.render(tokenizer, row["messages"]), add_special_tokens=False)["input_ids"])
    return len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1
