"""The task suite: does domaintune's default recipe beat the cheapest alternative on tasks it was not tuned for?

For each task in bench/tasks/ (six business tasks from the `evals` wheel, each written as the file a
user would bring): `domaintune init` writes the recipe from the data with no hand-tuning, then
`domaintune run` prepares, trains, evaluates against every baseline and reports. Printed per task:
rows, time, the strongest baseline and its score, the tuned score with the interval of its
difference to that baseline, and the verdict. Results: bench/results/task_suite.json.

Time budget (45 minutes on a 2-core CPU for all six): rows are capped per task (see each task's
module), and training stops after about TRAIN_TOKENS supervised-and-prompt tokens (`max_steps`
from the rows' mean length, never more than init planned). The forgetting probes are off and only
the adapter is exported: neither changes a verdict. Everything else is `init`'s choice. Each task
runs in its own process, so one task's memory is never another's.

    python bench/task_suite.py [--tasks event-severity,radio-exam] [--train-tokens 24000] [--out DIR]
                               [--heads] [--reuse]
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from tasks import TASKS  # noqa: E402
from tasks.common import source_rows  # noqa: E402

from domaintune import api  # noqa: E402
from domaintune.config.recipe import ModelConfig  # noqa: E402
from domaintune.config.runtime import cpu_description  # noqa: E402
from domaintune.core.chat import count_tokens  # noqa: E402
from domaintune.data.readers import read_files  # noqa: E402
from domaintune.models.loading import load_tokenizer  # noqa: E402
from domaintune.workflows.init_recipe import canonical_rows  # noqa: E402
from domaintune.workflows.quickstart import download_evals_wheel  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "task_suite.json"
TRAIN_TOKENS = 24_000  # ~4 minutes of LoRA training at ~100 tok/s on the 2-core AMD EPYC
MIN_STEPS = 10
EVAL_ROWS = 60


def mean_tokens(recipe_path: Path, tokenizer) -> float:
    """Tokens per row as training sees them (chat template, label prompt, system text), read the way init reads."""
    recipe = api.load(recipe_path)
    parsed = [row.data for _, rows in read_files(recipe.data.train) for row in rows if row.data is not None]
    rows = canonical_rows(parsed, recipe.data, recipe.data.format)
    return sum(count_tokens(tokenizer, row) for row in rows) / max(1, len(rows))


def capped_steps(recipe: dict, rows: int, tokens_per_row: float, train_tokens: int) -> int:
    """Steps for `train_tokens` tokens of training, never more than the recipe's epochs would take."""
    training, split = recipe["training"], recipe["data"]["split"]
    train_rows = rows * (1 - split["validation"] - split["test"])
    # An optimizer step takes batch_size rows grad_accum times (init accumulates long rows).
    rows_per_step = training["batch_size"] * training.get("grad_accum", 1)
    planned = math.ceil(train_rows / rows_per_step) * training["epochs"]
    affordable = math.ceil(train_tokens / (rows_per_step * tokens_per_row))
    return max(MIN_STEPS, min(planned, affordable))


def verdict_row(task, results: dict, rows: dict, seconds: float, steps: int) -> dict:
    baselines = results.get("baselines", {})
    strongest = baselines.get("strongest") or {}
    models = results.get("models", {})
    metric = baselines.get("metric")
    return {
        "task": task.name, "shape": task.shape, "rows": rows, "steps": steps, "seconds": round(seconds),
        "metric": metric,
        "base": models.get("base", {}).get("metrics", {}).get(metric),
        "strongest_baseline": f"{strongest.get('baseline')} ({strongest.get('reading')})" if strongest else None,
        "baseline_score": strongest.get("value"), "tuned": strongest.get("tuned"),
        "delta": strongest.get("delta"), "low": strongest.get("low"), "high": strongest.get("high"),
        "verdict": strongest.get("verdict"), "advice": baselines.get("advice"),
    }


def head_recipe(name: str, run, out: Path) -> dict:
    """A MiniLM sequence-classification head trained and tested on the generative run's own split files,
    so both answer the same test rows (as `quickstart --with-head` does for its token head)."""
    return {
        "name": f"{name}-head", "output_dir": str(out / "runs"), "model": {"name": "minilm-l6"},
        "data": {"format": "chat", "max_tokens": 256,
                 **{split: [str((run.data / f"{split}.jsonl").resolve())] for split in ("train", "validation", "test")}},
        "method": {"name": "head", "train": "full"}, "objective": {"name": "classify", "task": "sequence"},
        "training": {"epochs": 5, "batch_size": 16, "lr": 1e-4, "warmup_ratio": 0.1, "eval_every": 20,
                     "save_every": 20, "keep_checkpoints": 1},
    }


def head_score(task, run, out: Path, metric: str) -> dict:
    """The head's score on `metric` and its time: the cheaper tool for a closed label set, measured."""
    started = time.perf_counter()
    folder = out / task.name
    (folder / "head.yaml").write_text(yaml.safe_dump(head_recipe(task.name, run, out)), encoding="utf-8")
    with (folder / "head.log").open("w", encoding="utf-8") as log:
        head_run = api.run(folder / "head.yaml", console=Console(file=log, width=120))
    metrics = head_run.results()["models"]["tuned"]["metrics"]
    return {"score": metrics.get(metric.replace("choice_", "")), "seconds": round(time.perf_counter() - started),
            "run_dir": str(head_run.root)}


def finished_run(out: Path, name: str):
    """The latest evaluated run of this task under `out`, or None."""
    from domaintune.storage.rundir import RunDir

    done = sorted(path for path in (out / "runs").glob(f"{name}-2*") if (path / "eval" / "results.json").exists())
    return RunDir(done[-1]) if done else None


def run_task(task, wheel: Path, out: Path, train_tokens: int, tokenizer, console: Console, heads: bool,
             reuse: bool) -> dict:
    folder = out / task.name
    run = finished_run(out, task.name) if reuse else None
    if run is None:
        folder.mkdir(parents=True, exist_ok=True)
        rows = task.convert(source_rows(wheel, task.member), task.max_rows)
        data = folder / task.filename
        task.write(data, rows)
        written = api.init([data], out=folder / "recipe.yaml", task=task.task, name=task.name)
        steps = capped_steps(written["recipe"], len(rows), mean_tokens(folder / "recipe.yaml", tokenizer), train_tokens)
        overrides = [f"output_dir={out / 'runs'}", f"training.max_steps={steps}", "evaluation.forgetting=false",
                     f"evaluation.max_samples={EVAL_ROWS}", "export.merged=false"]
        with (folder / "run.log").open("w", encoding="utf-8") as log:
            run = api.run(folder / "recipe.yaml", overrides=overrides, console=Console(file=log, width=120))
    # From init writing the recipe to the run's last log line: the task's whole time, also for a reused run.
    seconds = (folder / "run.log").stat().st_mtime - (folder / "recipe.yaml").stat().st_mtime
    counts = {split: len(run.read_split(split)) for split in ("train", "validation", "test")}
    results = run.results()
    row = verdict_row(task, results, counts, seconds, run.recipe().training.max_steps)
    row["run_dir"] = str(run.root)
    if heads and results.get("labels") and row["metric"] in ("accuracy", "macro_f1"):
        row["head"] = head_score(task, run, out, row["metric"])
    console.print(f"{task.name}: {row['verdict']} ({row['seconds']} s)")
    return row


def task_in_child(name: str, wheel: Path, out: Path, train_tokens: int, heads: bool, reuse: bool) -> dict:
    task = next(task for task in TASKS if task.name == name)
    tokenizer = load_tokenizer(ModelConfig(name="smollm2-135m-instruct"))
    return run_task(task, wheel, out, train_tokens, tokenizer, Console(), heads, reuse)


def table(rows: list[dict]) -> Table:
    def number(value):
        return "–" if value is None else f"{value:.3f}"

    out = Table(title="Task suite: tuned vs the strongest baseline")
    for column in ("task", "shape", "train/test rows", "steps", "time", "metric", "strongest baseline", "its score",
                   "tuned", "tuned − baseline [interval]", "verdict", "MiniLM head"):
        out.add_column(column)
    for row in rows:
        interval = (f"{row['delta']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]" if row.get("delta") is not None
                    else "–")
        out.add_row(row["task"], row["shape"], f"{row['rows']['train']}/{row['rows']['test']}", str(row["steps"]),
                    f"{row['seconds']} s", str(row["metric"]), str(row["strongest_baseline"]),
                    number(row["baseline_score"]), number(row["tuned"]), interval, str(row["verdict"]),
                    f"{number(row['head']['score'])} ({row['head']['seconds']} s)" if row.get("head") else "–")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(task.name for task in TASKS), help="comma-separated task names")
    parser.add_argument("--train-tokens", type=int, default=TRAIN_TOKENS, help="training budget per task, in tokens")
    parser.add_argument("--heads", action="store_true",
                        help="also train a MiniLM sequence-classification head beside each closed-label task (off by "
                             "default: on 2026-11-28/29 it gave the majority answer on both, 3 of the suite's minutes)")
    parser.add_argument("--reuse", action="store_true",
                        help="take each task's latest finished run under --out instead of running it again")
    parser.add_argument("--out", type=Path, default=Path("runs") / "task_suite", help="where data, recipes and runs go")
    args = parser.parse_args()
    wanted = args.tasks.split(",")
    args.out = args.out.resolve()  # recipes name their files relative to themselves
    unknown = set(wanted) - {task.name for task in TASKS}
    if unknown:
        parser.error(f"unknown task(s): {', '.join(sorted(unknown))}; known: {', '.join(t.name for t in TASKS)}")
    console = Console()
    console.print(f"Task suite on {cpu_description()}")
    wheel = download_evals_wheel(console)
    started = time.perf_counter()
    rows = []
    for task in TASKS:
        if task.name in wanted:
            # Each task in its own process: six runs in one process grew to 20 GB and were killed (OOM).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows.append(pool.submit(task_in_child, task.name, wheel, args.out, args.train_tokens,
                                        args.heads, args.reuse).result())
    total = time.perf_counter() - started
    console.print(table(rows))
    wins = sum(row["verdict"] == "better" for row in rows)
    console.print(f"Tuned beats the strongest baseline on {wins} of {len(rows)} tasks; total {total / 60:.1f} min "
                  f"on {cpu_description()}.")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # A run of some tasks replaces their rows and keeps the others' earlier ones (each row has its own time).
    earlier = json.loads(RESULTS.read_text(encoding="utf-8"))["tasks"] if RESULTS.exists() else []
    kept = {row["task"]: row for row in earlier} | {row["task"]: {**row, "measured": time.strftime("%Y-%m-%d")}
                                                    for row in rows}
    ordered = [kept[task.name] for task in TASKS if task.name in kept]
    RESULTS.write_text(json.dumps({"cpu": cpu_description(), "train_tokens": args.train_tokens, "tasks": ordered},
                                  indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
