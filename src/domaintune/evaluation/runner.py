"""Evaluate a run: the base and the tuned model on the same splits and prompts, side by side."""
from __future__ import annotations

import json
import time

from rich.console import Console

from domaintune.evaluation.generation import generate, mean_loss, perplexity
from domaintune.evaluation.metrics import compute_metrics
from domaintune.evaluation.report import write_report
from domaintune.models.loading import load_causal_lm, load_tokenizer, load_trained_model
from domaintune.objectives.sft import prompt_text
from domaintune.rundir import RunDir
from domaintune.training.hardware import configure_threads, use_bf16
from domaintune.training.runner import read_split


def evaluate_model(model, tokenizer, recipe, splits: dict[str, list[dict]], bf16: bool, console: Console) -> tuple[dict, list[str]]:
    started = time.perf_counter()
    config = recipe.evaluation
    losses = {
        name: mean_loss(model, tokenizer, rows, recipe.data.max_tokens, config.batch_size, bf16)
        for name, rows in splits.items()
    }
    generation_rows = [row for row in splits["test"] if "messages" in row][: config.max_samples]
    predictions: list[str] = []
    metrics: dict[str, float] = {}
    if generation_rows:
        prompts = [prompt_text(tokenizer, row["messages"]) for row in generation_rows]
        predictions = generate(model, tokenizer, prompts, config.max_new_tokens, config.batch_size, bf16)
        references = [row["messages"][-1]["content"] for row in generation_rows]
        metrics = compute_metrics(config.metrics, predictions, references)
    result = {
        "loss": losses,
        "perplexity": {name: perplexity(loss) for name, loss in losses.items()},
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result, predictions


def evaluate_run(run: RunDir, console: Console | None = None) -> dict:
    """Writes eval/results.json, eval/samples.jsonl and report.html; returns the results."""
    console = console or Console(stderr=True)
    run.require_model()
    recipe = run.recipe()
    configure_threads(recipe.training)
    bf16 = use_bf16(recipe.training)
    tokenizer = load_tokenizer(recipe.model, path=str(run.model))
    splits = {"validation": read_split(run, "validation"), "test": read_split(run, "test")}
    generation_rows = [row for row in splits["test"] if "messages" in row][: recipe.evaluation.max_samples]

    results: dict = {"models": {}}
    outputs: dict[str, list[str]] = {}
    candidates = [("base", lambda: load_causal_lm(recipe.model))] if recipe.evaluation.compare_base else []
    candidates.append(("tuned", lambda: load_trained_model(recipe.model, run.model)))
    for label, load in candidates:
        console.print(f"Evaluating the {label} model on {len(splits['test'])} test rows "
                      f"({len(generation_rows)} generated)...")
        model = load()
        results["models"][label], outputs[label] = evaluate_model(model, tokenizer, recipe, splits, bf16, console)
        results["models"][label]["model"] = recipe.model.name if label == "base" else str(run.model)
        del model
    results.update(
        n_test=len(splits["test"]),
        n_generated=len(generation_rows),
        max_new_tokens=recipe.evaluation.max_new_tokens,
    )

    run.eval.mkdir(parents=True, exist_ok=True)
    (run.eval / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (run.eval / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for index, row in enumerate(generation_rows):
            sample = {
                "prompt": row["messages"][-2]["content"] if len(row["messages"]) > 1 else "",
                "reference": row["messages"][-1]["content"],
                "base": outputs["base"][index] if "base" in outputs else None,
                "tuned": outputs["tuned"][index],
            }
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    write_report(run.root)
    return results
