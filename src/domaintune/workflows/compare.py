"""`domaintune compare`: train several methods on the same data and tabulate what each costs and gives.

Each variant is an ordinary `domaintune run` of the recipe with that variant's method (and learning
rate), named `<name>-<label>`. The data is prepared with the same seed every time, so every variant
sees the same splits; the base model is evaluated once, with the first variant. Writes
`<output_dir>/<name>-compare/comparison.csv` and `comparison.md`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from rich.console import Console

from domaintune.config import Recipe
from domaintune.config.recipe import as_recipe
from domaintune.models.loading import merge_blocker
from domaintune.storage.rundir import RunDir
from domaintune.workflows.stages import run_recipe

COLUMNS = ["variant", "method", "test_loss", "metrics", "train_seconds", "trainable", "trainable_share",
           "artifact_mb", "merged", "run_dir"]


def artifact_bytes(model_dir: Path) -> int:
    """Size of what the method saved: the adapter or the full weights (not the tokenizer)."""
    return sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.suffix == ".safetensors")


def run_row(run: RunDir, label: str, method: str) -> dict:
    """One run's line of the table (a run not yet trained or evaluated has None where that is missing)."""
    results, training = run.results(), run.training_summary()
    tuned = (results.get("models") or {}).get("tuned") or {}
    parameters = training.get("parameters") or {}
    trained = run.model.is_dir()
    return {
        "variant": label,
        "method": method,
        "test_loss": (tuned.get("loss") or {}).get("test"),
        "metrics": tuned.get("metrics") or {},
        "train_seconds": training.get("runtime_seconds"),
        "trainable": parameters.get("trainable"),
        "trainable_share": parameters.get("share"),
        "artifact_mb": artifact_bytes(run.model) / 2**20 if trained else None,
        "merged": merge_blocker(run.model) is None if trained else None,
        "run_dir": str(run.root),
    }


def compare_methods(recipe: Recipe, console: Console) -> dict:
    rows, base = [], None
    for index, variant in enumerate(recipe.compare.variants):
        label = variant.label or variant.method.name
        data = recipe.model_dump(mode="json", exclude={"compare"})
        data["name"] = f"{recipe.name}-{label}"
        data["method"] = variant.method.model_dump(mode="json")
        if variant.lr is not None:
            data["training"]["lr"] = variant.lr
        data["evaluation"]["compare_base"] = index == 0 and recipe.evaluation.compare_base
        console.rule(f"[bold]{label}[/] ({variant.method.name})")
        run = run_recipe(as_recipe(data), console=console)
        base = base or run.results()["models"].get("base")
        rows.append(run_row(run, label, variant.method.name))
    out = Path(recipe.output_dir) / f"{recipe.name}-compare"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "metrics": json.dumps(row["metrics"])})
    (out / "comparison.md").write_text(markdown(rows, base), encoding="utf-8")
    return {"rows": rows, "base": base, "folder": str(out)}


def markdown(rows: list[dict], base: dict | None) -> str:
    metric_names = sorted({name for row in rows for name in row["metrics"]})
    header = ["variant", "method", "test loss", *metric_names, "train s", "trainable", "share", "artifact MB", "mergeable"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    if base:
        lines.append("| base | - | " + " | ".join([fmt(base.get("loss", {}).get("test")),
                     *(fmt(base.get("metrics", {}).get(m)) for m in metric_names), "-", "-", "-", "-", "-"]) + " |")
    for row in rows:
        cells = [row["variant"], row["method"], fmt(row["test_loss"]), *(fmt(row["metrics"].get(m)) for m in metric_names),
                 fmt(row["train_seconds"], 0), "-" if row["trainable"] is None else f"{row['trainable']:,}",
                 "-" if row["trainable_share"] is None else f"{row['trainable_share']:.2%}", fmt(row["artifact_mb"], 2),
                 "-" if row["merged"] is None else "yes" if row["merged"] else "no (adapter only)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
