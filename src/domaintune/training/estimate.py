"""Estimate a run's wall time, peak memory and tokens before spending them.

Tokens and steps come from the prepared data (exact). Speed comes from a probe: a few real
training steps of the recipe's own engine in a child process (so its peak RSS is its own), one
validation pass, and one batch of generation. Every finished training run also records its
measured speed in the cache, so `domaintune train` can print an estimate without probing.
"""
from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from domaintune.config import Recipe
from domaintune.errors import DomaintuneError
from domaintune.models.registry import cache_dir
from domaintune.objectives import encode_row
from domaintune.rundir import RunDir

PROBE_WARMUP_STEPS = 2  # one-off costs (allocation, kernel selection) are excluded from the rate
PROBE_STEPS = 6
EXPORT_SECONDS = 15.0  # merging and writing a ~135M model; small next to training


def throughput_file() -> Path:
    return cache_dir() / "throughput.json"


def setup_key(recipe: Recipe, threads: int, bf16: bool) -> str:
    """Speed depends on these; a measurement is reused only for the same setup."""
    t = recipe.training
    return (
        f"{recipe.model.name}|{recipe.method.name}|{'bf16' if bf16 else 'fp32'}|threads={threads}"
        f"|batch={t.batch_size}|packing={t.packing}|supervised_logits_only={t.supervised_logits_only}|compile={t.compile}"
    )


def record_throughput(key: str, measurement: dict) -> None:
    path = throughput_file()
    known = json.loads(path.read_text()) if path.exists() else {}
    known[key] = {**known.get(key, {}), **measurement}
    path.write_text(json.dumps(known, indent=2))


def lookup_throughput(key: str) -> dict | None:
    path = throughput_file()
    return json.loads(path.read_text()).get(key) if path.exists() else None


def split_lengths(run: RunDir, recipe: Recipe, tokenizer) -> dict[str, list[int]]:
    """Token length of every prepared row, per split, as training sees it."""
    from domaintune.training.runner import read_split

    return {
        split: [len(encode_row(tokenizer, row, recipe.data.max_tokens)["input_ids"]) for row in read_split(run, split)]
        for split in ("train", "validation", "test")
    }


def probe_lengths(recipe: Recipe, tokenizer) -> list[int]:
    """Tokens the forgetting check runs per model: each probe's prompt once, then each choice."""
    from domaintune.evaluation.forgetting import load_probes, probe_prompt

    if not recipe.evaluation.forgetting:
        return []
    _, probes = load_probes(recipe.evaluation.probes)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return [count(probe_prompt(tokenizer, probe)) + sum(map(count, probe.choices)) for probe in probes]


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
    phases = " · ".join(f"{name} {_duration(value)}" for name, value in seconds.items())
    memory = f", peak memory ≈ {result['peak_rss_mb'] / 1024:.1f} GiB" if result.get("peak_rss_mb") else ""
    return (
        f"Estimate: {work['steps']} steps over {work['train_tokens']:,} training tokens ({work['train_rows']} rows); "
        f"≈ {_duration(result['total_seconds'])} for the whole run ({phases}){memory}."
    )


def announce_training(recipe: Recipe, key: str, lengths: dict[str, list[int]], console) -> None:
    """Before training: exact steps and tokens, and the time this setup's last measured speed implies."""
    work = count_work(recipe, lengths)
    speed = lookup_throughput(key)
    line = f"Plan: {work['steps']} steps over {work['train_tokens']:,} tokens"
    if speed:
        seconds = estimate(work, speed, compare_base=False)["seconds"]
        line += f"; ≈ {_duration(seconds['training'] + seconds['validation'])} at {speed['tokens_per_second']:.0f} tokens/s measured before"
    else:
        line += "; no speed measured for this setup yet (`domaintune estimate` measures it; this run will too)"
    console.print(line, highlight=False)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def probe(run: RunDir) -> dict:
    """Time a few steps, one validation and one generation batch in a child process."""
    scratch = Path(tempfile.mkdtemp(prefix="domaintune-probe-"))
    try:
        probe_run = RunDir(scratch / "run")
        shutil.copytree(run.data, probe_run.data)
        shutil.copy2(run.recipe_file, probe_run.recipe_file)
        command = [sys.executable, "-m", "domaintune.training.estimate", str(probe_run.root)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise DomaintuneError(f"the speed probe failed:\n{done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _probe_in_this_process(root: Path) -> dict:
    """The child side of `probe`: prints one JSON line with the measurements."""
    import yaml
    from rich.console import Console
    from transformers import TrainerCallback

    from domaintune.evaluation.generation import generate
    from domaintune.models.loading import load_causal_lm, load_tokenizer
    from domaintune.objectives.sft import prompt_text
    from domaintune.training.hardware import configure_threads, use_bf16
    from domaintune.training.runner import read_split, train_model

    run = RunDir(root)
    recipe = run.recipe()
    steps = PROBE_WARMUP_STEPS + PROBE_STEPS
    data = recipe.model_dump(mode="json")
    data["training"].update(max_steps=steps, eval_every=steps, save_every=steps, early_stopping=None, log_every=steps)
    run.recipe_file.write_text(yaml.safe_dump(data))

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []
            self.evaluate_seconds: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.global_step))

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluate_seconds = time.perf_counter() - self.marks[-1][0]

    clock = Clock()
    train_model(run, callbacks=[clock], console=Console(stderr=True, quiet=True))
    tokenizer = load_tokenizer(recipe.model)
    lengths = split_lengths(run, recipe, tokenizer)
    (t0, step0), (t1, step1) = clock.marks[PROBE_WARMUP_STEPS - 1], clock.marks[-1]
    result = {
        "tokens_per_second": (step1 - step0) * real_tokens_per_step(recipe, lengths) / (t1 - t0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    validation_tokens = sum(lengths["validation"])
    if clock.evaluate_seconds and validation_tokens:
        result["eval_tokens_per_second"] = validation_tokens / clock.evaluate_seconds
    prompts = [prompt_text(tokenizer, row["messages"]) for row in read_split(run, "test") if "messages" in row]
    if prompts:
        configure_threads(recipe.training)
        model = load_causal_lm(recipe.model)
        started = time.perf_counter()
        generate(model, tokenizer, prompts[: recipe.evaluation.batch_size], recipe.evaluation.max_new_tokens,
                 recipe.evaluation.batch_size, use_bf16(recipe.training))
        result["generation_batch_seconds"] = time.perf_counter() - started
    return result


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


if __name__ == "__main__":
    print(json.dumps(_probe_in_this_process(Path(sys.argv[1]))))
