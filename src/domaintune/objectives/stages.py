"""Staged training (a curriculum in one recipe): e.g. `pretrain` on domain text, then `sft` on the task.

Each entry of `stages` overrides parts of the recipe (data, objective, method, training); stage
k is an ordinary run (train, evaluate, export) whose base model is stage k-1's merged export, so
every stage starts from the previous one's weights and its report compares it with that start.
Intermediate stages export float32 weights (nothing is lost between stages) and must use a method
that merges (not prefix, prompt or adapters). A summary of all stages goes to
`<output_dir>/<name>-stages.json`.

A stage refers to an earlier stage's run with `stage:LABEL` anywhere in its objective block (PPO's
`rewards: [{model: stage:reward}]`). A stage that trains no policy (`reward`, marked `POLICY = False`)
passes on the model it started from, so ranking data → reward model → PPO tunes the original model.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from rich.console import Console

from domaintune.errors import DomaintuneError
from domaintune.objectives import get_objective

STAGE_SECTIONS = ("data", "objective", "method", "training", "evaluation")


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("method", "objective"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)  # a method or objective block replaces the recipe's whole block
    return out


def stage_recipes(recipe) -> list[dict]:
    """The resolved recipe of each stage (as dicts; model.name is filled in while running)."""
    from domaintune.config import validate_recipe

    base = recipe.model_dump(mode="json", exclude={"stages", "compare", "tune"})
    stages = []
    for index, stage in enumerate(recipe.stages):
        data = merge(base, {key: value for key, value in stage.model_dump(mode="json", exclude_unset=True).items() if key in STAGE_SECTIONS})
        data["name"] = f"{recipe.name}-{stage.label or f'stage{index + 1}'}"
        last = index == len(recipe.stages) - 1
        if not last:
            data.setdefault("export", {}).update(merged=True, dtype="float32")
        checked = validate_recipe(data, source=f"stages[{index}]")
        if not last:
            from domaintune.methods import get_method

            if not getattr(get_method(checked.method.name), "MERGEABLE", True):
                raise DomaintuneError(
                    f"stages[{index}].method: {checked.method.name} can't be merged into the weights, so the next "
                    "stage could not start from them; use it in the last stage only"
                )
        stages.append(data)
    return stages


def run_stages(recipe, console: Console):
    from domaintune import api

    stages = stage_recipes(recipe)
    summary, previous, run = [], None, None
    outputs: dict[str, str] = {}  # stage label -> its run directory, for `stage:LABEL` references
    for index, data in enumerate(stages):
        if previous is not None:
            data["model"]["name"] = previous
        data["objective"] = resolve_stage_references(data["objective"], outputs, f"stages[{index}].objective")
        console.rule(f"[bold]stage {index + 1}/{len(stages)}[/]: {data['name']} ({data['objective']['name']}, {data['method']['name']})")
        run = api.run(data, console=console)
        results = json.loads((run.eval / "results.json").read_text(encoding="utf-8")) if (run.eval / "results.json").exists() else {}
        training = json.loads((run.model / "training.json").read_text(encoding="utf-8"))
        summary.append({
            "stage": index + 1,
            "run_dir": str(run.root),
            "base_model": data["model"]["name"],
            "objective": data["objective"]["name"],
            "method": data["method"]["name"],
            "train_loss": training.get("train_loss"),
            "domain_perplexity": training.get("domain_perplexity"),
            "results": {name: {"loss": model.get("loss"), "metrics": model.get("metrics")}
                        for name, model in results.get("models", {}).items()},
        })
        outputs[recipe.stages[index].label or f"stage{index + 1}"] = str(run.root)
        if getattr(get_objective(data["objective"]["name"]), "POLICY", True):
            previous = str(run.export / "merged")
        # A stage that trains no policy (a reward model) passes on the model it started from.
    out = Path(recipe.output_dir) / f"{recipe.name}-stages.json"
    out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    console.print(f"Stages: {out}")
    return run


def resolve_stage_references(value, outputs: dict[str, str], where: str):
    """Replace each `stage:LABEL` string (e.g. a PPO reward model) with that earlier stage's run directory."""
    if isinstance(value, dict):
        return {key: resolve_stage_references(item, outputs, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_stage_references(item, outputs, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, str) and value.startswith("stage:"):
        label = value.removeprefix("stage:")
        if label not in outputs:
            known = ", ".join(outputs) or "none yet"
            raise DomaintuneError(f"{where}: {value!r} names no earlier stage (earlier stages: {known})")
        return outputs[label]
    return value
