"""How long a run will take: exact work counts (steps, tokens) times measured speeds. Every finished
training run records its speed here, keyed by the setup it depends on, so the next `train` of the
same setup prints its plan with a time; `domaintune estimate` (workflows/estimate.py) measures one."""
from __future__ import annotations

import math
from pathlib import Path

from domaintune.config import Recipe
from domaintune.core.errors import DomaintuneError
from domaintune.models.registry import cache_dir
from domaintune.storage.jsonl import read_json, write_json

EXPORT_SECONDS = 15.0  # merging and writing a ~135M model; small next to training


def throughput_file() -> Path:
    return cache_dir() / "throughput.json"


def fuses_lora(recipe: Recipe, bf16: bool) -> bool:
    """Whether training fuses the LoRA layers (`training/fused_lora.py`): asked for (the default), plain LoRA
    (not DoRA), fp32, not compiled. Here rather than there so that this module stays free of torch."""
    training, method = recipe.training, recipe.method
    return training.fused_lora and method.name == "lora" and not (method.dora or bf16 or training.compile)


def setup_key(recipe: Recipe, threads: int, bf16: bool) -> str:
    """Speed depends on these; a measurement is reused only for the same setup."""
    t = recipe.training
    return (
        f"{recipe.model.name}|{recipe.method.name}|{'bf16' if bf16 else 'fp32'}|threads={threads}"
        f"|batch={t.batch_size}|packing={t.packing}|supervised_logits_only={t.supervised_logits_only}|compile={t.compile}"
        f"{'|fused_lora' if fuses_lora(recipe, bf16) else ''}"
    )


def _known_throughputs() -> dict:
    # A cache: a file cut short (by a version that wrote it in place) is measured again, not an error.
    try:
        return read_json(throughput_file(), {})
    except DomaintuneError:
        return {}


def record_throughput(key: str, measurement: dict) -> None:
    known = _known_throughputs()
    known[key] = {**known.get(key, {}), **measurement}
    write_json(throughput_file(), known)


def lookup_throughput(key: str) -> dict | None:
    return _known_throughputs().get(key)


def real_tokens_per_step(recipe: Recipe, lengths: dict[str, list[int]]) -> float:
    """Mean non-padding tokens an optimiser step consumes (what speeds are measured in)."""
    train = lengths["train"]
    return recipe.training.batch_size * recipe.training.grad_accum * sum(train) / len(train) if train else 0.0


def count_work(recipe: Recipe, lengths: dict[str, list[int]]) -> dict:
    """Exact token and step counts for a run over rows of these lengths."""
    train = lengths["train"]
    config = recipe.training
    rows_per_step = config.batch_size * config.grad_accum
    steps = config.max_steps if config.max_steps > 0 else math.ceil(math.ceil(len(train) / rows_per_step) * config.epochs)
    generated = min(len(lengths.get("test", [])), recipe.evaluation.max_samples)
    return {
        "train_rows": len(train),
        "steps": steps,
        "train_tokens": round(steps * real_tokens_per_step(recipe, lengths)),
        "validation_tokens": sum(lengths.get("validation", [])),
        "evaluations": steps // config.eval_every if lengths.get("validation") else 0,
        "test_tokens": sum(lengths.get("test", [])),
        "probe_tokens": sum(lengths.get("probes", [])),
        "generation_batches": math.ceil(generated / recipe.evaluation.batch_size) if generated else 0,
    }


def describe(result: dict) -> str:
    """One paragraph for the console."""
    work, seconds = result["work"], result["seconds"]
    phases = " · ".join(f"{name} {duration(value)}" for name, value in seconds.items())
    memory = f", peak memory ≈ {result['peak_rss_mb'] / 1024:.1f} GiB" if result.get("peak_rss_mb") else ""
    return (
        f"Estimate: {work['steps']} steps over {work['train_tokens']:,} training tokens ({work['train_rows']} rows); "
        f"≈ {duration(result['total_seconds'])} for the whole run ({phases}){memory}."
    )


def announce_training(recipe: Recipe, key: str, lengths: dict[str, list[int]], console) -> None:
    """Before training: exact steps and tokens, and the time this setup's last measured speed implies."""
    work = count_work(recipe, lengths)
    speed = lookup_throughput(key)
    line = f"Plan: {work['steps']} steps over {work['train_tokens']:,} tokens"
    if speed:
        seconds = estimate(work, speed, compare_base=False)["seconds"]
        line += f"; ≈ {duration(seconds['training'] + seconds['validation'])} at {speed['tokens_per_second']:.0f} tokens/s measured before"
    else:
        line += "; no speed measured for this setup yet (`domaintune estimate` measures it; this run will too)"
    console.print(line, highlight=False)


def duration(seconds: float) -> str:
    """'45s', '9m20s', '1h02m05s'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def estimate(work: dict, speed: dict, compare_base: bool) -> dict:
    """Seconds per phase of `domaintune run` from exact work counts and measured speeds."""
    train_rate = speed["tokens_per_second"]
    eval_rate = speed.get("eval_tokens_per_second") or 3 * train_rate  # a forward pass is ~1/3 of a training step
    models = 2 if compare_base else 1
    phases = {
        "training": work["train_tokens"] / train_rate,
        "validation": work["evaluations"] * work["validation_tokens"] / eval_rate,
        # Evaluation: loss on validation and test, forgetting probes, then generation, for each model compared.
        "evaluation": models * ((work["validation_tokens"] + work["test_tokens"] + work["probe_tokens"]) / eval_rate
                                + work["generation_batches"] * speed.get("generation_batch_seconds", 0.0)),
        "export": EXPORT_SECONDS,
    }
    return {
        "work": work,
        "speed": speed,
        "seconds": {name: round(value, 1) for name, value in phases.items()},
        "total_seconds": round(sum(phases.values()), 1),
        "peak_rss_mb": round(speed["peak_rss_mb"]) if speed.get("peak_rss_mb") else None,
    }
