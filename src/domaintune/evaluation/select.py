"""Choosing the base model (`domaintune select RECIPE --candidates a,b,c`).

Every candidate answers the same sample of the recipe's test split zero-shot and few-shot (a few
training rows as earlier chat turns), and is timed on this machine. Candidates are ranked by the
recipe's first metric, then by the loss of the reference answers (it separates models that both
score zero before tuning), then by latency; a candidate nearly as good and clearly cheaper is
recommended instead of the best one, and the reasons say so.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from domaintune.config import Recipe
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import final_answer, prompt_text, with_examples
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.metric_choice import answer_stops, choose_metrics
from domaintune.evaluation.metrics import compute_metrics
from domaintune.models.generation import load_generator, weights_folders
from domaintune.models.inference import mean_loss, row_losses
from domaintune.models.loading import load_causal_lm, load_tokenizer, on_inference_device
from domaintune.storage.jsonl import write_json
from domaintune.storage.rundir import RunDir

# "Nearly as good": within this much of the best score, a candidate that is this many times faster wins.
TOLERANCE = 0.02
FASTER = 1.5


def measure(recipe: Recipe, name: str, rows: list[dict], examples: list[dict], metrics: list[str], stop: list[str],
            console: Console) -> dict:
    """Quality zero- and few-shot, reference loss, speed and weight memory of one candidate; answers end
    at `stop` as evaluation's do."""
    config = recipe.model.model_copy(update={"name": name})
    evaluation, bf16 = recipe.evaluation, use_bf16(recipe)
    started = time.perf_counter()
    tokenizer, model = load_tokenizer(config), on_inference_device(load_causal_lm(config))
    # The engine evaluation would use, so the latency compared is the one a user gets.
    generator = load_generator(lambda: model, tokenizer, recipe.inference, folders=weights_folders(config), bf16=bf16,
                               exact=True, console=console)
    loaded = time.perf_counter() - started
    references = [final_answer(row) for row in rows]
    result = {"model": name, "load_seconds": round(loaded, 2),
              "parameters": sum(p.numel() for p in model.parameters()),
              "memory_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)}
    for label, shots in [("zero_shot", [])] + ([("few_shot", examples)] if examples else []):
        prompted = [with_examples(row, shots) for row in rows]
        started = time.perf_counter()
        answers = generator.generate([prompt_text(tokenizer, row["messages"], row.get("tools")) for row in prompted],
                                     evaluation.max_new_tokens, evaluation.batch_size, stop=stop)
        seconds = time.perf_counter() - started
        result[label] = compute_metrics(metrics, answers, references)
        if not shots:
            result["seconds_per_item"] = round(seconds / len(rows), 3)
            tokens = sum(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers)
            result["tokens_per_second"] = round(tokens / seconds, 1)
    result.setdefault("few_shot", result["zero_shot"])
    result["loss"] = mean_loss(row_losses(model, tokenizer, rows, recipe.data.max_tokens, evaluation.batch_size, bf16))
    console.print(f"  {name}: {result['zero_shot']} zero-shot, {result['few_shot']} few-shot, "
                  f"{result['seconds_per_item']} s/item", highlight=False)
    return result


def rank(results: list[dict], metric: str) -> dict:
    """Order candidates and pick one, with reasons in words."""
    for result in results:
        result["score"] = max(result["zero_shot"][metric], result["few_shot"][metric])
        result["setting"] = "few-shot" if result["few_shot"][metric] > result["zero_shot"][metric] else "zero-shot"
    loss = lambda r: r["loss"] if r["loss"] is not None else float("inf")  # noqa: E731
    ranking = sorted(results, key=lambda r: (-r["score"], loss(r), r["seconds_per_item"]))
    best = ranking[0]
    clear_lead = len(ranking) == 1 or best["score"] > ranking[1]["score"]
    reasons = [f"highest {metric}: {best['score']:.3f} ({best['setting']})" if clear_lead else
               f"tied on {metric} ({best['score']:.3f}); lowest loss on the reference answers ({loss(best):.3f})"]
    choice = best
    for other in ranking[1:]:
        if best["score"] - other["score"] <= TOLERANCE and other["seconds_per_item"] * FASTER <= best["seconds_per_item"]:
            choice = other
            reasons = [f"{metric} {other['score']:.3f} is within {TOLERANCE} of the best ({best['model']}, "
                       f"{best['score']:.3f})", f"{best['seconds_per_item'] / other['seconds_per_item']:.1f}× faster "
                       f"per answer ({other['seconds_per_item']} s)"]
            break
    reasons.append(f"{choice['memory_mb']:.0f} MB of weights, {choice['tokens_per_second']} generated tokens/s here")
    return {"metric": metric, "ranking": [r["model"] for r in ranking], "recommendation": choice["model"],
            "reasons": reasons, "candidates": ranking}


def select_base_model(recipe: Recipe, run_data: Path, candidates: list[str], samples: int, shots: int,
                      console: Console) -> dict:
    """Measure and rank the candidates on prepared data (train and test splits in `run_data`)."""
    run = RunDir(run_data.parent)
    rows = [row for row in run.read_split("test") if "messages" in row][:samples]
    if not rows:
        raise DomaintuneError("select: the recipe's data has no chat test rows to compare the candidates on")
    train = run.read_split("train")
    examples = [row for row in train if "messages" in row][:shots]
    metrics, _ = choose_metrics(recipe.evaluation.metrics, train, rows)
    configure_threads(recipe.training)
    console.print(f"Comparing {len(candidates)} base models on {len(rows)} test rows ({shots}-shot and zero-shot)...")
    stop = answer_stops(recipe.evaluation.stop, train)
    results = [measure(recipe, name, rows, examples, metrics, stop, console) for name in candidates]
    selection = rank(results, metrics[0])
    return {"samples": len(rows), "shots": len(examples), **selection}


def write_selection(selection: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "selection.json"
    write_json(path, selection)
    return path
