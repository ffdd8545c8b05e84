"""`domaintune estimate`: predict a run's wall time, peak memory and tokens before spending them.

Tokens and steps come from the prepared data (exact). Speed comes from a probe: a few real
training steps of the recipe's own engine in a fresh Python process (so its peak RSS is its own), one
validation pass, and one batch of generation.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from domaintune.config import Recipe
from domaintune.config.recipe import as_recipe, stage_recipes
from domaintune.config.runtime import configure_threads, thread_count, use_bf16
from domaintune.core.chat import count_tokens, prompt_text
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.forgetting import load_probes, probe_prompt
from domaintune.models.generation import open_generator
from domaintune.models.loading import load_tokenizer
from domaintune.storage.rundir import RunDir
from domaintune.training import forecast
from domaintune.workflows import pipeline

PROBE_WARMUP_STEPS = 2  # one-off costs (allocation, kernel selection) are excluded from the rate
PROBE_STEPS = 6


def estimate_run(recipe: Recipe, console: Console) -> dict:
    """The forecast of `run(recipe)`: one run, or each stage of a curriculum and their total."""
    if not recipe.stages:
        return estimate_one(recipe, console)
    stages = []
    for data in stage_recipes(recipe):
        # A later stage starts from the earlier one's weights: the same architecture, so the same speed.
        console.rule(f"estimate: stage {data['name']}")
        try:
            stages.append({"stage": data["name"], **estimate_one(as_recipe(data), console)})
        except DomaintuneError as error:
            reason = str(error).splitlines()[0]
            console.print(f"[yellow]stage {data['name']}: not estimated ({reason})", highlight=False)
            stages.append({"stage": data["name"], "not_estimated": reason})
    total = sum(stage.get("total_seconds", 0.0) for stage in stages)
    missing = [stage["stage"] for stage in stages if "not_estimated" in stage]
    console.print(f"Estimate for all {len(stages)} stages: ≈ {forecast.duration(total)}"
                  + (f", not counting {', '.join(missing)}" if missing else ""), highlight=False)
    return {"stages": stages, "total_seconds": round(total, 1), "not_estimated": missing}


def estimate_one(recipe: Recipe, console: Console) -> dict:
    """Prepare the recipe's data in scratch, count its work exactly, time a probe, and forecast."""
    # The probe's run directory is scratch: it must not show up among the user's runs, and goes once measured.
    folder = tempfile.mkdtemp(prefix="domaintune-estimate-")
    try:
        run, _ = pipeline.prepare(recipe.model_copy(update={"output_dir": folder}), console=console)
        tokenizer = load_tokenizer(recipe.model)
        lengths = {**split_lengths(run, recipe, tokenizer), "probes": probe_lengths(recipe, tokenizer)}
        console.print("Timing a few training steps, a validation pass and a generation batch...")
        speed = probe(run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    forecast.record_throughput(forecast.setup_key(recipe, thread_count(recipe.training), use_bf16(recipe)), speed)
    result = forecast.estimate(forecast.count_work(recipe, lengths), speed, recipe.evaluation.compare_base)
    console.print(forecast.describe(result), highlight=False)
    return result


def split_lengths(run: RunDir, recipe: Recipe, tokenizer) -> dict[str, list[int]]:
    """Token length of every prepared row, per split, as training sees it (an encoder without a chat
    template sees a conversation's turns as plain text)."""
    return {
        split: [min(count_tokens(tokenizer, row), recipe.data.max_tokens) for row in run.read_split(split)]
        for split in ("train", "validation", "test")
    }


def probe_lengths(recipe: Recipe, tokenizer) -> list[int]:
    """Tokens the forgetting check runs per model: each probe's prompt once, then each choice. An encoder
    (no chat template) is not asked the probes."""
    if not recipe.evaluation.forgetting or tokenizer.chat_template is None:
        return []
    _, probes = load_probes(recipe.evaluation.probes)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return [count(probe_prompt(tokenizer, probe)) + sum(map(count, probe.choices)) for probe in probes]


def probe(run: RunDir) -> dict:
    """Time a few steps, one validation and one generation batch in a fresh Python process."""
    scratch = Path(tempfile.mkdtemp(prefix="domaintune-probe-"))
    try:
        probe_run = RunDir(scratch / "run")
        shutil.copytree(run.data, probe_run.data)
        shutil.copy2(run.recipe_file, probe_run.recipe_file)
        outcome_file = scratch / "outcome.json"
        # A new interpreter, not multiprocessing: its peak memory is the probe's own, and the caller's script is
        # not imported again (multiprocessing's spawn re-runs a script that has no `if __name__ == "__main__"`).
        child = subprocess.run([sys.executable, "-c", PROBE_CHILD, str(probe_run.root), str(outcome_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        outcome = json.loads(outcome_file.read_text(encoding="utf-8")) if outcome_file.exists() else {}
        if "user_error" in outcome:
            raise DomaintuneError(outcome["user_error"])
        if "speed" not in outcome:  # the child's failure, whatever it was, is the probe's
            reason = outcome.get("error") or (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            raise DomaintuneError(f"the speed probe failed: {reason}")
        return outcome["speed"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


PROBE_CHILD = "import sys; from domaintune.workflows.estimate import probe_child; probe_child(*sys.argv[1:])"


def probe_child(root: str, outcome_file: str) -> None:
    """The child side of `probe`: its measurements, or why it failed, as JSON in `outcome_file`."""
    try:
        outcome = {"speed": probe_in_this_process(Path(root))}
    except DomaintuneError as error:
        outcome = {"user_error": str(error)}
    except Exception as error:
        outcome = {"error": f"{type(error).__name__}: {error}"}
    Path(outcome_file).write_text(json.dumps(outcome), encoding="utf-8")


def probe_in_this_process(root: Path) -> dict:
    """The measurements, taken in this process (`probe_child` runs it in the probe's own)."""
    import yaml
    from transformers import TrainerCallback

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
    pipeline.train_run(run, callbacks=[clock], console=Console(stderr=True, quiet=True))
    tokenizer = load_tokenizer(recipe.model)
    lengths = split_lengths(run, recipe, tokenizer)
    if len(clock.marks) < 2:
        raise DomaintuneError(f"objective {recipe.objective.name} trains without reporting its steps, so its speed "
                              "can't be probed; `domaintune run` it on a sample instead")
    # An objective may cap the steps below the probe's (fewshot): then fewer warm-up steps are left out.
    warmup = min(PROBE_WARMUP_STEPS, len(clock.marks) - 1)
    (t0, step0), (t1, step1) = clock.marks[warmup - 1], clock.marks[-1]
    result = {
        "tokens_per_second": (step1 - step0) * forecast.real_tokens_per_step(recipe, lengths) / (t1 - t0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    validation_tokens = sum(lengths["validation"])
    if clock.evaluate_seconds and validation_tokens:
        result["eval_tokens_per_second"] = validation_tokens / clock.evaluate_seconds
    # An encoder (classification head, embeddings) does not generate: there is no generation to time.
    prompts = [prompt_text(tokenizer, row["messages"], row.get("tools")) for row in run.read_split("test")
               if "messages" in row and tokenizer.chat_template is not None]
    if prompts:
        threads = configure_threads(recipe.training)
        # The engine the evaluation will use (converted now, once, if it is CTranslate2): that is what is timed.
        generator = open_generator(recipe.model, recipe.inference, bf16=use_bf16(recipe), exact=True, threads=threads)
        started = time.perf_counter()
        generator.generate(prompts[: recipe.evaluation.batch_size], recipe.evaluation.max_new_tokens,
                           recipe.evaluation.batch_size)
        result["generation_batch_seconds"] = time.perf_counter() - started
    return result
