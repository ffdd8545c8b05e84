"""Several tasks in one run: each task's data goes through the normal prepare pipeline on its own
(data/tasks/<name>/), its rows are tagged (`task`, and `tag` opening the request, e.g. "[NER]"),
and the train splits are mixed by weight into one causal-LM training split: a task of weight 2
appears twice, 0.5 half (a seeded sample). Validation and test keep every task's rows once.
Evaluation runs the usual loss and generation metrics per task (each task its own metrics), base
vs tuned, with intervals; results.json holds them under `tasks` and the report shows one row per
task and metric.
"""
from __future__ import annotations

import random

from rich.console import Console

from domaintune.config.objectives import MultitaskConfig, Task
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import final_answer, question_text
from domaintune.evaluation.base_vs_tuned import (
    compared_models,
    evaluate_model,
    exact_generator,
    rows_to_generate,
    write_results,
)
from domaintune.evaluation.bootstrap import paired_comparison
from domaintune.evaluation.metric_choice import answer_stops, choose_metrics
from domaintune.models.loading import load_tokenizer
from domaintune.storage.jsonl import write_json, write_jsonl
from domaintune.storage.rundir import RunDir

SUMMARY = "several tasks in one run: per-task data, mixing weights, a task tag in the prompt; per-task evaluation"
Config = MultitaskConfig  # the registry and the recipe know an objective by its Config
SPLITS = ("train", "validation", "test")


def tagged(row: dict, task: Task) -> dict:
    row = {**row, "task": task.name}
    if task.tag and "messages" in row:
        messages = [dict(m) for m in row["messages"]]
        user = next(m for m in reversed(messages) if m["role"] == "user")
        user["content"] = f"{task.tag} {user['content']}"
        row["messages"] = messages
    elif task.tag:
        row["text"] = f"{task.tag} {row['text']}"
    return row


def mix(rows: list[dict], weight: float, rng: random.Random) -> list[dict]:
    whole, part = int(weight), weight - int(weight)
    return rows * whole + rng.sample(rows, round(part * len(rows)))


def prepare(recipe, run: RunDir, prepare_one) -> dict:
    """Prepare each task's data, tag its rows, mix the train splits by weight; returns the data card."""

    rng = random.Random(recipe.seed)
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    cards = {}
    for task in recipe.objective.tasks:
        folder = run.data / "tasks" / task.name
        cards[task.name] = prepare_one(recipe.data.model_copy(update={"train": task.train, "validation": task.validation,
                                                                      "test": task.test}), folder)
        for split in SPLITS:
            rows = [tagged(row, task) for row in run.read_split(f"tasks/{task.name}/{split}")]
            splits[split] += mix(rows, task.weight, rng) if split == "train" else rows
    rng.shuffle(splits["train"])
    for split, rows in splits.items():
        write_jsonl(run.data / f"{split}.jsonl", rows)
    card = {"splits": {split: len(rows) for split, rows in splits.items()},
            "tasks": {task.name: {"weight": task.weight, "tag": task.tag, **cards[task.name].get("splits", {})}
                      for task in recipe.objective.tasks}}
    write_json(run.data / "data_card.json", card)
    return card


def _task_key(key: str, task: str) -> str:
    # "loss (test)" -> "loss (test · ner)"; "entity_f1" -> "ner: entity_f1"
    return key.replace(")", f" · {task})") if key.endswith(")") else f"{task}: {key}"


def evaluate(run: RunDir, console: Console | None = None, harness: bool | None = None) -> dict:
    console = console or Console(stderr=True)
    recipe = run.recipe()
    threads = configure_threads(recipe.training)
    bf16 = use_bf16(recipe)
    tokenizer = load_tokenizer(recipe.model, path=str(run.model))
    rows = {split: run.read_split(split) for split in ("train", "validation", "test")}
    results: dict = {"models": {}, "tasks": {}}
    stats: dict[str, dict] = {}
    samples = []
    for label, load, folders in compared_models(recipe, run):
        model = load()
        generator = exact_generator(model, tokenizer, recipe, folders, threads, console)
        entry = results["models"][label] = {"model": recipe.model.name if label == "base" else str(run.model),
                                            "metrics": {}, "loss": {}, "perplexity": {}}
        stats[label] = {}
        for task in recipe.objective.tasks:
            splits = {split: [r for r in rows[split] if r.get("task") == task.name] for split in ("validation", "test")}
            train = [r for r in rows["train"] if r.get("task") == task.name]
            metrics, _ = choose_metrics(task.metrics or recipe.evaluation.metrics, train, splits["test"])
            console.print(f"Evaluating the {label} model on task {task.name} ({len(splits['test'])} test rows)...")
            generated = rows_to_generate(splits["test"], recipe.evaluation.max_samples)
            result, predictions, item_stats = evaluate_model(model, generator, tokenizer, recipe, splits, generated,
                                                             bf16, metrics, answer_stops(recipe.evaluation.stop, train))
            results["tasks"].setdefault(task.name, {})[label] = result
            entry["metrics"].update({f"{task.name}: {k}": v for k, v in result["metrics"].items()})
            for kind in ("loss", "perplexity"):
                entry[kind].update({f"{split} · {task.name}": v for split, v in result[kind].items()})
            stats[label].update({_task_key(k, task.name): v for k, v in item_stats.items()})
            if label == "tuned":
                samples += [{"prompt": question_text(r["messages"]), "reference": final_answer(r),
                             "base": None, "tuned": p, "task": task.name} for r, p in zip(generated, predictions)]
        del model, generator
    if "base" in stats:
        results.update(paired_comparison(recipe, stats["base"], stats["tuned"]))
    results["n_test"] = len(rows["test"])
    return write_results(run, results, samples, console)
