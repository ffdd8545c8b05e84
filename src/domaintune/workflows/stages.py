"""Staged training (a curriculum in one recipe): e.g. `pretrain` on domain text, then `sft` on the task.

Each entry of `stages` overrides parts of the recipe (data, objective, method, training); stage
k is an ordinary run (train, evaluate, export) whose base model is stage k-1's merged export, so
every stage starts from the previous one's weights and its report compares it with that start.
Intermediate stages export float32 weights (nothing is lost between stages) and must use a method
that merges (not prefix, prompt or adapters). A summary of all stages goes to
`<output_dir>/<name>-stages.json`.

A stage refers to an earlier stage's run with `stage:LABEL` anywhere in its objective block (PPO's
`rewards: [{model: stage:reward}]`). A stage that trains no policy (`reward`, whose Config says `trains_policy = False`)
passes on the model it started from, so ranking data → reward model → PPO tunes the original model.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from domaintune.config import Recipe
from domaintune.config.objectives import objective_config
from domaintune.config.recipe import as_recipe, stage_recipes
from domaintune.core.errors import DomaintuneError
from domaintune.storage.jsonl import write_json
from domaintune.storage.rundir import RunDir
from domaintune.workflows import pipeline


def run_recipe(recipe: Recipe, console: Console) -> RunDir:
    """The whole recipe: its stages in order when it has them, else one run."""
    return run_stages(recipe, console) if recipe.stages else pipeline.run_once(recipe, console)


def run_stages(recipe: Recipe, console: Console) -> RunDir:
    stages = stage_recipes(recipe)
    summary, previous, run = [], None, None
    outputs: dict[str, str] = {}  # stage label -> its run directory, for `stage:LABEL` references
    for index, data in enumerate(stages):
        if previous is not None:
            data["model"]["name"] = previous
        data["objective"] = resolve_stage_references(data["objective"], outputs, f"stages[{index}].objective")
        console.rule(f"[bold]stage {index + 1}/{len(stages)}[/]: {data['name']} ({data['objective']['name']}, {data['method']['name']})")
        run = pipeline.run_once(as_recipe(data), console=console)
        results, training = run.results(), run.training_summary()
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
        if objective_config(data["objective"]["name"]).trains_policy:
            previous = str(run.export / "merged")
        # A stage that trains no policy (a reward model) passes on the model it started from.
    out = Path(recipe.output_dir) / f"{recipe.name}-stages.json"
    write_json(out, summary)
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
