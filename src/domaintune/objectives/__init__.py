"""Layer 6: what the model learns from. One module per objective, registered here by name; the
recipe's `objective.name` picks it. Adding an objective is its Config in config/objectives.py, one
module here, one line below, and one test.

An objective module names its `Config` (from config/objectives.py) and has `SUMMARY` (one line on
when to use it). Everything else is an optional hook, each with a default; the pipeline
(workflows/pipeline.py) is the one place that looks them up, so nothing else asks for an objective:

- `after_prepare(data_dir, config)`: rewrite the prepared splits once after `data prepare` (instruct).
- `encode_rows(tokenizer, rows, max_length, config) -> list[dict]`: the split's training examples
  for the causal-LM trainer (pretrain packs blocks). Default: one example per row, its shape picking
  the encoding (core/chat.py).
- `DOMAIN_PERPLEXITY = True`: the trainer measures perplexity on the validation examples before and after.
- `train(run, resume, callbacks, console) -> dict`, `evaluate(run, console, harness) -> dict`,
  `export(run, console) -> dict`: an objective that is not causal-LM training on token labels
  (a classification head, an embedding model, preference optimisation) brings its own trainer,
  evaluation and export; the defaults are the causal-LM ones in training/, evaluation/ and export/.
- `prepare(recipe, run, prepare_one) -> card`: prepare the data itself, calling `prepare_one(data_config,
  folder)` (the normal pipeline) per part (multitask).
"""
from __future__ import annotations

from types import ModuleType

from domaintune.config.objectives import objective_names
from domaintune.objectives import (
    classify,
    contrastive,
    dpo,
    fewshot,
    grpo,
    instruct,
    kto,
    multitask,
    orpo,
    ppo,
    pretrain,
    reward,
    sft,
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


def get_objective(name: str) -> ModuleType:
    """The module of the objective a recipe names (`auto` is sft)."""
    return next(module for module in OBJECTIVES.values() if name in objective_names(module.Config))


def hook(config, name: str):
    """The objective's own hook `name`, or None where the default applies."""
    return getattr(get_objective(config.name), name, None)
