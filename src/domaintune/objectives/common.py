"""Pieces shared by the objectives that bring their own trainer and evaluation (classify, fewshot,
contrastive): the text a row is about, results written like the causal-LM evaluation's, so one
report renders them all, and the training summary."""
from __future__ import annotations

import json

from rich.console import Console

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domaintune.rundir import RunDir


def row_text(row: dict) -> str:
    """The input a classifier or encoder sees: the last user turn (labelled rows: the label prompt's text)."""
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def row_answer(row: dict) -> str:
    return row["messages"][-1]["content"]


def paired_comparison(recipe, base: dict, tuned: dict) -> dict:
    """results.json's `confidence` and `comparison`: paired bootstrap of per-item statistics."""
    from domaintune.evaluation import bootstrap

    config = recipe.evaluation
    return {
        "confidence": {"confidence": config.confidence, "resamples": config.bootstrap_resamples, "seed": recipe.seed,
                       "method": "paired bootstrap over test items (percentile)"},
        "comparison": bootstrap.compare(base, tuned, config.confidence, config.bootstrap_resamples, recipe.seed),
    }


def write_results(run: RunDir, results: dict, samples: list[dict], console: Console) -> dict:
    """eval/results.json, eval/samples.jsonl and report.html, as the causal-LM evaluation writes them."""
    from domaintune.evaluation.report import write_report

    run.eval.mkdir(parents=True, exist_ok=True)
    (run.eval / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (run.eval / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    console.print(f"Report: {write_report(run.root)}")
    return results


def write_training_summary(run: RunDir, summary: dict) -> dict:
    run.model.mkdir(parents=True, exist_ok=True)
    (run.model / "training.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def write_rejected(run: RunDir, name: str, rejected: list[dict], console: Console) -> None:
    """Rows an objective can't use, with the reason, next to the data's own rejected.jsonl."""
    path = run.data / f"{name}_rejected.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
    if rejected:
        console.print(f"[yellow]{len(rejected)} row(s) set aside for {name}, with reasons: {path}", highlight=False)
