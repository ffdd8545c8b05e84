"""Evaluate a run: the base and the tuned model on the same splits and prompts, side by side.

Every base-vs-tuned change gets a paired bootstrap interval and a verdict (bootstrap.py), the
general-ability probes show what tuning cost (forgetting.py), and errors_analysis.py lists what got worse.
Opt-in: lm-evaluation-harness tasks (harness.py) and a pairwise LLM judge (judge.py).
"""
from __future__ import annotations

import time

import numpy as np
from rich.console import Console

from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import prompt_text
from domaintune.evaluation import bootstrap, judge
from domaintune.evaluation import harness as lm_harness  # lm-eval is an optional extra
from domaintune.evaluation.errors_analysis import label_confusion, regressions
from domaintune.evaluation.forgetting import answer_probes, load_probes, probe_stats
from domaintune.evaluation.metrics import compute_metrics, entity_errors
from domaintune.evaluation.report import write_report
from domaintune.models.inference import generate, mean_loss, perplexity, row_losses
from domaintune.models.loading import load_causal_lm, load_tokenizer, load_trained_model
from domaintune.storage.rundir import RunDir


def evaluate_model(model, tokenizer, recipe, splits: dict[str, list[dict]], bf16: bool,
                   console: Console) -> tuple[dict, list[str], dict[str, bootstrap.ItemStats]]:
    """Loss per split and generation metrics; also the per-item statistics the bootstrap resamples."""
    started = time.perf_counter()
    config = recipe.evaluation
    losses = {name: row_losses(model, tokenizer, rows, recipe.data.max_tokens, config.batch_size, bf16)
              for name, rows in splits.items()}
    stats = {f"{key} ({split})": value
             for split, rows in losses.items() if rows is not None
             for key, value in bootstrap.loss_item_stats(rows).items()}
    generation_rows = [row for row in splits["test"] if "messages" in row][: config.max_samples]
    predictions: list[str] = []
    metrics: dict[str, float] = {}
    if generation_rows:
        prompts = [prompt_text(tokenizer, row["messages"]) for row in generation_rows]
        predictions = generate(model, tokenizer, prompts, config.max_new_tokens, config.batch_size, bf16)
        references = [row["messages"][-1]["content"] for row in generation_rows]
        metrics = compute_metrics(config.metrics, predictions, references)
        stats.update(bootstrap.metric_item_stats(config.metrics, predictions, references))
    loss = {name: mean_loss(rows) for name, rows in losses.items()}
    result = {
        "loss": loss,
        "perplexity": {name: perplexity(value) for name, value in loss.items()},
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result, predictions, stats


def evaluate_causal_lm(run: RunDir, console: Console, harness: bool | None = None, select=None) -> dict:
    """The default evaluation: base and tuned causal LMs on the test split. Writes eval/results.json,
    eval/samples.jsonl and report.html; returns the results. `harness` (default: evaluation.harness)
    also runs the lm-eval tasks written to eval/harness/. An objective's own evaluation may run it and
    add to it; `select(rows)` picks the rows of each split it evaluates."""
    run.require_model()
    recipe = run.recipe()
    config = recipe.evaluation
    configure_threads(recipe.training)
    bf16 = use_bf16(recipe)
    tokenizer = load_tokenizer(recipe.model, path=str(run.model))
    splits = {split: (select or list)(run.read_split(split)) for split in ("validation", "test")}
    generation_rows = [row for row in splits["test"] if "messages" in row][: config.max_samples]
    probe_source, probes = load_probes(config.probes) if config.forgetting else (None, [])
    harness_tasks: list[str] = []
    if config.harness if harness is None else harness:
        harness_tasks = lm_harness.write_tasks(run.eval / "harness", recipe, tokenizer, generation_rows, probes)
        lm_harness.check_builtin_tasks(run.eval / "harness", config.harness_tasks)

    results: dict = {"models": {}}
    outputs: dict[str, list[str]] = {}
    stats: dict[str, dict[str, bootstrap.ItemStats]] = {}
    probe_results: dict[str, dict[str, bootstrap.ItemStats]] = {}
    candidates = [("base", lambda: load_causal_lm(recipe.model))] if config.compare_base else []
    candidates.append(("tuned", lambda: load_trained_model(recipe.model, run.model)))
    for label, load in candidates:
        console.print(f"Evaluating the {label} model on {len(splits['test'])} test rows "
                      f"({len(generation_rows)} generated)...")
        model = load()
        results["models"][label], outputs[label], stats[label] = evaluate_model(
            model, tokenizer, recipe, splits, bf16, console
        )
        results["models"][label]["model"] = recipe.model.name if label == "base" else str(run.model)
        if probes:
            started = time.perf_counter()
            correct = answer_probes(model, tokenizer, probes, config.batch_size, bf16)
            probe_results[label] = probe_stats(probes, correct)
            results["models"][label]["probes"] = {
                "accuracy": {key: float(np.mean(s.components)) for key, s in probe_results[label].items()},
                "seconds": round(time.perf_counter() - started, 1),
            }
        if harness_tasks:
            console.print(f"Running {len(harness_tasks) + len(config.harness_tasks)} lm-eval tasks on the {label} model...")
            results["models"][label]["harness"] = lm_harness.run_tasks(
                model, tokenizer, run.eval / "harness", harness_tasks, config.harness_tasks, config.batch_size,
                config.harness_limit,
            )
        del model
    results.update(
        n_test=len(splits["test"]),
        n_generated=len(generation_rows),
        max_new_tokens=config.max_new_tokens,
    )

    samples = [
        {
            "prompt": row["messages"][-2]["content"] if len(row["messages"]) > 1 else "",
            "reference": row["messages"][-1]["content"],
            "base": outputs["base"][index] if "base" in outputs else None,
            "tuned": outputs["tuned"][index],
        }
        for index, row in enumerate(generation_rows)
    ]
    if "base" in stats:
        results.update(bootstrap.paired_comparison(recipe, stats["base"], stats["tuned"]))
        if probe_results:
            results["forgetting"] = {
                "source": probe_source,
                "items": {key: s.components.shape[1] for key, s in probe_results["tuned"].items()},
                "comparison": bootstrap.compare(probe_results["base"], probe_results["tuned"], config.confidence,
                                                config.bootstrap_resamples, recipe.seed),
            }
    if samples:
        results["errors"] = _error_analysis(config, generation_rows, samples, outputs, stats)
    if config.judge and samples and "base" in outputs:
        results["judge"] = _judge(config, samples, run, bf16, console)

    write_results(run, results, samples)
    return results


def write_results(run: RunDir, results: dict, samples: list[dict], console: Console | None = None) -> dict:
    """eval/results.json, eval/samples.jsonl and report.html, for every objective alike, so one report
    renders them all."""
    run.write_results(results, samples)
    report = write_report(run.root)
    if console is not None:
        console.print(f"Report: {report}")
    return results


def _error_analysis(config, rows: list[dict], samples: list[dict], outputs: dict[str, list[str]],
                    stats: dict[str, dict[str, bootstrap.ItemStats]]) -> dict:
    references = [sample["reference"] for sample in samples]
    errors: dict = {}
    if "base" in outputs:
        # The first metric the recipe names is the one the items are ranked by.
        metric = config.metrics[0]
        errors["regressions"] = regressions(
            samples, bootstrap.item_scores(stats["base"][metric]), bootstrap.item_scores(stats["tuned"][metric]),
            metric, config.error_examples,
        )
    if "entity_f1" in config.metrics:
        errors["entities"] = {label: entity_errors(predictions, references) for label, predictions in outputs.items()}
    if "accuracy" in config.metrics or any(row.get("label") is not None for row in rows):
        errors["labels"] = {label: label_confusion(predictions, references) for label, predictions in outputs.items()}
    return errors


def _judge(config, samples: list[dict], run: RunDir, bf16: bool, console: Console) -> dict:
    settings = config.judge
    if settings.endpoint:
        ask, name = judge.endpoint_judge(settings.endpoint, settings.endpoint_model, settings.api_key_env,
                                         settings.max_new_tokens), f"{settings.endpoint_model} at {settings.endpoint}"
    else:
        ask, name = judge.local_judge(settings.model, settings.max_new_tokens, config.batch_size, bf16), settings.model
    judged = samples[: settings.max_items]
    console.print(f"Judging {len(judged)} answer pairs with {name}, both orders...")
    verdicts = judge.judge_pairs(ask, judged, settings.rubric)
    for sample, verdict in zip(judged, verdicts):
        sample["judge"] = verdict["winner"]
    return {"judge": name, "rubric": settings.rubric,
            **judge.summarise(verdicts, judge.read_feedback(run.eval / "feedback.jsonl"))}
