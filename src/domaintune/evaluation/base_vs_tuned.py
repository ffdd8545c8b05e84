"""Evaluate a run: the base and the tuned model on the same splits and prompts, side by side.

Every base-vs-tuned change gets a paired bootstrap interval and a verdict (bootstrap.py), the
general-ability probes show what tuning cost (forgetting.py), and errors_analysis.py lists what got worse.
Opt-in: lm-evaluation-harness tasks (harness.py) and a pairwise LLM judge (judge.py).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from rich.console import Console

from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import final_answer, prompt_text, question_text
from domaintune.data.contamination import TrainIndex, near_copy_answers
from domaintune.data.split import sample_rows
from domaintune.evaluation import baselines, bootstrap, judge
from domaintune.evaluation import harness as lm_harness  # lm-eval is an optional extra
from domaintune.evaluation.errors_analysis import label_confusion, regressions
from domaintune.evaluation.forgetting import answer_probes, load_probes, probe_stats
from domaintune.evaluation.metric_choice import answer_stops, choose_metrics, closed_label_set
from domaintune.evaluation.metrics import entity_errors
from domaintune.evaluation.report import write_report
from domaintune.models.generation import TextGenerator, load_generator, weights_folders
from domaintune.models.inference import mean_loss, perplexity, row_losses
from domaintune.models.loading import load_causal_lm, load_tokenizer, load_trained_model, on_inference_device
from domaintune.storage.rundir import RunDir


def rows_to_generate(test_rows: list[dict], limit: int) -> list[dict]:
    """The test rows whose answers are generated and scored: chat rows, at most `limit`, answers in their shares."""
    return sample_rows([row for row in test_rows if "messages" in row], limit)


def generation_samples(rows: list[dict], outputs: dict[str, list[str]]) -> list[dict]:
    """eval/samples.jsonl: per generated row, the question the report shows, the prompt turns both models
    answered (a reward and the feedback page need the system prompt and earlier turns too), the reference
    and each model's answer."""
    return [
        {
            "prompt": question_text(row["messages"]),
            "prompt_messages": row["messages"][:-1],
            "reference": final_answer(row),
            "base": outputs["base"][index] if "base" in outputs else None,
            "tuned": outputs["tuned"][index],
        }
        for index, row in enumerate(rows)
    ]


def evaluate_model(model, generator: TextGenerator, tokenizer, recipe, splits: dict[str, list[dict]],
                   generation_rows: list[dict], bf16: bool, metrics: list[str], stop: list[str]
                   ) -> tuple[dict, list[str], dict[str, bootstrap.ItemStats]]:
    """Loss per split (from the torch `model`) and the `metrics` of the answers `generator` writes for
    `generation_rows` (`rows_to_generate` of the test split), each ending before the first of `stop`
    (`answer_stops`); also the per-item statistics the bootstrap resamples."""
    started = time.perf_counter()
    config = recipe.evaluation
    losses = {name: row_losses(model, tokenizer, rows, recipe.data.max_tokens, config.batch_size, bf16)
              for name, rows in splits.items()}
    stats = {f"{key} ({split})": value
             for split, rows in losses.items() if rows is not None
             for key, value in bootstrap.loss_item_stats(rows).items()}
    predictions: list[str] = []
    values: dict[str, float] = {}
    generation_seconds = 0.0
    if generation_rows:
        prompts = [prompt_text(tokenizer, row["messages"], row.get("tools")) for row in generation_rows]
        generation_started = time.perf_counter()
        predictions = generator.generate(prompts, config.max_new_tokens, config.batch_size, stop=stop)
        generation_seconds = round(time.perf_counter() - generation_started, 1)
        values, metric_stats = baselines.scored(metrics, predictions, [final_answer(row) for row in generation_rows])
        stats.update(metric_stats)
    loss = {name: mean_loss(rows) for name, rows in losses.items()}
    result = {
        "loss": loss,
        "perplexity": {name: perplexity(value) for name, value in loss.items()},
        "metrics": values,
        "seconds": round(time.perf_counter() - started, 1),
        "generation": {**generator.describe(), "seconds": generation_seconds},
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
    threads = configure_threads(recipe.training)
    bf16 = use_bf16(recipe)
    tokenizer = load_tokenizer(recipe.model, path=str(run.model))
    splits = {split: (select or list)(run.read_split(split)) for split in ("validation", "test")}
    generation_rows = rows_to_generate(splits["test"], config.max_samples)
    train = (select or list)(run.read_split("train"))
    metrics, why = choose_metrics(config.metrics, train, generation_rows)
    stop = answer_stops(config.stop, train)
    labels = closed_label_set(train, generation_rows) if config.baselines else None
    probe_source, probes = load_probes(config.probes) if config.forgetting else (None, [])
    harness_tasks: list[str] = []
    if config.harness if harness is None else harness:
        harness_tasks = lm_harness.write_tasks(run.eval / "harness", recipe, tokenizer, generation_rows, probes)
        lm_harness.check_builtin_tasks(run.eval / "harness", config.harness_tasks)

    results: dict = {"models": {}, "metrics_chosen": {"metrics": metrics, "reason": why}}
    if config.baselines:
        results["baselines"] = {"models": {}}
    if labels:
        results["labels"] = labels
    outputs: dict[str, list[str]] = {}
    stats: dict[str, dict[str, bootstrap.ItemStats]] = {}
    probe_results: dict[str, dict[str, bootstrap.ItemStats]] = {}
    for label, load, folders in compared_models(recipe, run):
        console.print(f"Evaluating the {label} model on {len(splits['test'])} test rows "
                      f"({len(generation_rows)} generated)...")
        model = on_inference_device(load())
        generator = exact_generator(model, tokenizer, recipe, folders, threads, console)
        results["models"][label], outputs[label], stats[label] = evaluate_model(
            model, generator, tokenizer, recipe, splits, generation_rows, bf16, metrics, stop
        )
        results["models"][label]["model"] = recipe.model.name if label == "base" else str(run.model)
        if labels:  # the same answers read leniently, and the labels scored by likelihood
            values, label_stats = baselines.label_readings(model, tokenizer, generation_rows, outputs[label], labels,
                                                           metrics, config.batch_size, bf16)
            results["models"][label]["metrics"].update(values)
            stats[label].update(label_stats)
        if label == "base" and config.baselines and config.shots and generation_rows and metrics:
            _kshot_baseline(model, generator, tokenizer, recipe, train, generation_rows, metrics, labels, stop, bf16,
                            console, results, outputs, stats)
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
        del model, generator
    if config.baselines and generation_rows and metrics and (answer := baselines.majority_answer(train)) is not None:
        values, stats[baselines.MAJORITY] = baselines.majority_scores(answer, generation_rows, metrics)
        results["baselines"]["models"][baselines.MAJORITY] = {
            "model": f"the most frequent train answer, {answer[:60]!r}", "metrics": values}
    results.update(
        n_test=len(splits["test"]),
        n_generated=len(generation_rows),
        max_new_tokens=config.max_new_tokens,
        stop=stop,
    )

    samples = generation_samples(generation_rows, outputs)
    if "base" in stats:
        results.update(bootstrap.paired_comparison(recipe, stats["base"], stats["tuned"]))
        if probe_results:
            results["forgetting"] = {
                "source": probe_source,
                "items": {key: s.components.shape[1] for key, s in probe_results["tuned"].items()},
                "comparison": bootstrap.compare(probe_results["base"], probe_results["tuned"], config.confidence,
                                                config.bootstrap_resamples, recipe.seed),
            }
        if config.baselines and metrics and (key := baselines.primary_key(metrics, stats["tuned"])):
            reading = baselines.CONSTRAINED if config.answers == "constrained" and labels else None
            results["baselines"].update(baselines.strongest_baseline(key, stats, config.confidence,
                                                                     config.bootstrap_resamples, recipe.seed,
                                                                     reading, labels) or {})
            if "advice" in results["baselines"]:
                results["baselines"]["advice"] = _why_not_better(recipe, train, generation_rows, outputs["tuned"]) \
                    + results["baselines"]["advice"]
    if samples:
        results["errors"] = _error_analysis(config, metrics, generation_rows, samples, outputs, stats)
    if config.judge and samples and "base" in outputs:
        results["judge"] = _judge(config, samples, run, bf16, console)

    write_results(run, results, samples)
    return results


def _why_not_better(recipe, train: list[dict], generation_rows: list[dict], tuned_answers: list[str]) -> str:
    """What the data and the tuned answers show about a verdict that is not 'better', before the general advice:
    near-copies first, since more steps need not get past them (product-matching: 100 steps did not)."""
    contamination = recipe.data.contamination
    copies = near_copy_answers(TrainIndex(train, contamination.ngram), generation_rows, contamination.threshold)
    answer = baselines.collapsed_answer(tuned_answers)
    return ((baselines.near_copy_advice(tuned_answers, copies) or "")
            + (baselines.collapse_advice(answer, recipe.data.balance_labels) if answer else ""))


def compared_models(recipe, run: RunDir) -> list[tuple[str, Callable, list]]:
    """(label, load the torch model, the folders its weights come from) for base (unless
    evaluation.compare_base is off) and tuned."""
    tuned = ("tuned", lambda: load_trained_model(recipe.model, run.model), weights_folders(recipe.model, run.model))
    base = ("base", lambda: load_causal_lm(recipe.model), weights_folders(recipe.model))
    return [base, tuned] if recipe.evaluation.compare_base else [tuned]


def exact_generator(model, tokenizer, recipe, folders: list, threads: int, console: Console) -> TextGenerator:
    """The engine for an evaluation's answers: the recipe's, at a precision that leaves verdicts as torch's."""
    return load_generator(lambda: model, tokenizer, recipe.inference, folders=folders, bf16=use_bf16(recipe),
                          threads=threads, exact=True, console=console)


def write_results(run: RunDir, results: dict, samples: list[dict], console: Console | None = None) -> dict:
    """eval/results.json, eval/samples.jsonl and report.html, for every objective alike, so one report
    renders them all."""
    run.write_results(results, samples)
    report = write_report(run.root)
    if console is not None:
        console.print(f"Report: {report}")
    return results


def _kshot_baseline(model, generator: TextGenerator, tokenizer, recipe, train: list[dict], rows: list[dict],
                    metrics: list[str], labels: list[str] | None, stop: list[str], bf16: bool, console: Console,
                    results: dict, outputs: dict, stats: dict) -> None:
    """The base model given a fair chance: k seeded train rows as earlier turns, on the same test rows."""
    config = recipe.evaluation
    context = getattr(model.config, "max_position_embeddings", None) or 4 * recipe.data.max_tokens
    examples = baselines.kshot_examples(tokenizer, train, rows, config.shots, recipe.seed, context,
                                        config.max_new_tokens)
    if not examples:
        return
    console.print(f"Evaluating the base model with {len(examples)} examples from train ({len(rows)} generated)...")
    started = time.perf_counter()
    answers = generator.generate(baselines.kshot_prompts(tokenizer, rows, examples), config.max_new_tokens,
                                 config.batch_size, stop=stop)
    values, stats[baselines.KSHOT] = baselines.scored(metrics, answers, [final_answer(row) for row in rows])
    if labels:
        more_values, more_stats = baselines.label_readings(None, tokenizer, rows, answers, labels, metrics,
                                                           config.batch_size, bf16)
        values.update(more_values)
        stats[baselines.KSHOT].update(more_stats)
    outputs[baselines.KSHOT] = answers
    results["baselines"]["models"][baselines.KSHOT] = {
        "model": f"{recipe.model.name}, {len(examples)} examples from train", "shots": len(examples), "metrics": values,
        "seconds": round(time.perf_counter() - started, 1), "generation": generator.describe()}


def _error_analysis(config, metrics: list[str], rows: list[dict], samples: list[dict], outputs: dict[str, list[str]],
                    stats: dict[str, dict[str, bootstrap.ItemStats]]) -> dict:
    references = [sample["reference"] for sample in samples]
    models = {label: outputs[label] for label in ("base", "tuned") if label in outputs}
    errors: dict = {}
    if "base" in models and metrics:
        # The first metric is the one the items are ranked by.
        metric = baselines.primary_key(metrics, stats["tuned"]) or metrics[0]
        errors["regressions"] = regressions(
            samples, bootstrap.item_scores(stats["base"][metric]), bootstrap.item_scores(stats["tuned"][metric]),
            metric, config.error_examples,
        )
    if "entity_f1" in metrics:
        errors["entities"] = {label: entity_errors(predictions, references) for label, predictions in models.items()}
    if {"accuracy", "macro_f1"} & set(metrics) or any(row.get("label") is not None for row in rows):
        errors["labels"] = {label: label_confusion(predictions, references) for label, predictions in models.items()}
    return errors


def _judge(config, samples: list[dict], run: RunDir, bf16: bool, console: Console) -> dict:
    settings = config.judge
    key_note = None
    if settings.endpoint:
        key, key_note = judge.endpoint_api_key(settings.endpoint, settings.api_key_env, settings.allowed_hosts)
        console.print(f"Judge endpoint: {key_note}", highlight=False)
        ask, name = judge.endpoint_judge(settings.endpoint, settings.endpoint_model, key,
                                         settings.max_new_tokens), f"{settings.endpoint_model} at {settings.endpoint}"
    else:
        ask, name = judge.local_judge(settings.model, settings.max_new_tokens, config.batch_size, bf16,
                                     run.recipe().inference), settings.model
    judged = samples[: settings.max_items]
    console.print(f"Judging {len(judged)} answer pairs with {name}, both orders...")
    verdicts = judge.judge_pairs(ask, judged, settings.rubric)
    for sample, verdict in zip(judged, verdicts):
        sample["judge"] = verdict["winner"]
    return {"judge": name, "rubric": settings.rubric, **({"api_key": key_note} if key_note else {}),
            **judge.summarise(verdicts, judge.read_feedback(run.eval / "feedback.jsonl"))}
