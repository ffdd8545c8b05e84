"""Render a run directory into one self-contained HTML report.

CSS and charts (base64 PNG) are inlined so `report.html` can be mailed or attached to a
ticket and still open offline. Only `eval/results.json` is required; every other input
(and every optional part of the results: intervals, forgetting probes, error analysis)
adds its section when present. This module reads the run and renders the template; the rows
and text come from `report_tables`, the charts from `report_charts`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.report_charts import (
    change_chart,
    confusion_chart,
    entity_chart,
    judge_chart,
    loss_chart,
    metrics_chart,
    splits_chart,
)
from domaintune.evaluation.report_tables import (
    baseline_metric_table,
    baseline_rows,
    card_value,
    class_rows,
    comparison_rows,
    confidence_note,
    dig,
    entity_error_rows,
    entity_type_f1,
    eval_facts,
    forgetting_section,
    harness_rows,
    headline,
    metric_names,
    model_rank,
)
from domaintune.storage.jsonl import read_json, read_jsonl

DEFAULT_SAMPLES = 12  # when the recipe does not set evaluation.report_samples


def write_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` from the run's recipe, logs, evaluation and data card."""
    run_dir = Path(run_dir)
    results = _read_json(run_dir / "eval" / "results.json", required=True)
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not models:
        raise DomaintuneError(f"{run_dir / 'eval' / 'results.json'}: no 'models' to report on")
    models = {name: models[name] for name in sorted(models, key=model_rank)}

    recipe_text, recipe = _read_recipe(run_dir / "recipe.yaml")
    data_card = _read_json(run_dir / "data" / "data_card.json") or {}
    splits = data_card.get("splits") if isinstance(data_card.get("splits"), dict) else {}
    shown = dig(recipe, "evaluation", "report_samples")
    samples = read_jsonl(run_dir / "eval" / "samples.jsonl")[: DEFAULT_SAMPLES if shown is None else shown]

    comparison = results.get("comparison") or {}
    task_rows, fit_rows = comparison_rows(models, comparison)
    forgetting = results.get("forgetting") or {}
    errors = results.get("errors") or {}
    entity_errors = entity_error_rows(errors.get("entities") or {})
    html = _template().render(
        title=recipe.get("name") or run_dir.name,
        model=dig(recipe, "model", "name"),
        method=dig(recipe, "method", "name"),
        run_name=run_dir.name,
        headline=headline(models, results.get("baselines")),
        baseline_advice=(results.get("baselines") or {}).get("advice"),
        metrics_reason=dig(results, "metrics_chosen", "reason"),
        baselines=baseline_rows(results.get("baselines")),
        baseline_models=(results.get("baselines") or {}).get("models") or {},
        baseline_metrics=baseline_metric_table(models, (results.get("baselines") or {}).get("models") or {}),
        labels=results.get("labels"),
        class_rows=class_rows(errors.get("labels") or {}),
        entity_f1_rows=entity_type_f1(errors.get("entities") or {}),
        columns=list(models),
        compare="base" in models and "tuned" in models,
        intervals=bool(comparison),
        task_rows=task_rows,
        fit_rows=fit_rows,
        eval_facts=eval_facts(results, models),
        metrics_chart=metrics_chart(models, metric_names(models)),
        confidence=confidence_note(results.get("confidence")),
        change_chart=change_chart({row["label"]: comparison[row["label"]] for row in task_rows if row["ci"]}),
        forgetting=forgetting_section(forgetting, models),
        regressions=errors.get("regressions"),
        entity_errors=entity_errors,
        entity_chart=entity_chart(entity_errors),
        harness_rows=harness_rows(models),
        judge=results.get("judge"),
        judge_chart=judge_chart(results.get("judge")),
        confusions=[(name, confusion_chart(matrix)) for name, matrix in (errors.get("labels") or {}).items()],
        loss_chart=loss_chart([r for r in read_jsonl(run_dir / "metrics.jsonl") if isinstance(r, dict)]),
        samples=samples,
        show_base=any(sample.get("base") is not None for sample in samples),
        card_overview=[(key, card_value(value)) for key, value in data_card.items() if not isinstance(value, dict)],
        card_tables=[
            (key, [(k, card_value(v)) for k, v in value.items()])
            for key, value in data_card.items()
            if isinstance(value, dict)
        ],
        splits_chart=splits_chart(splits),
        data_report="data/data_report.html" if (run_dir / "data" / "data_report.html").exists() else None,
        recipe_text=recipe_text,
    )
    path = run_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _read_json(path: Path, required: bool = False) -> Any:
    if required and not path.is_file():
        raise DomaintuneError(f"{path} not found: evaluate the run before writing its report")
    return read_json(path)


def _read_recipe(path: Path) -> tuple[str | None, dict]:
    if not path.is_file():
        return None, {}
    text = path.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DomaintuneError(f"{path}: not valid YAML ({error})") from error
    return text, recipe if isinstance(recipe, dict) else {}


def _template() -> jinja2.Template:
    source = resources.files("domaintune.evaluation").joinpath("report.html.j2").read_text(encoding="utf-8")
    # Autoescape: prompts and model outputs are untrusted text and must not become markup.
    environment = jinja2.Environment(
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    return environment.from_string(source)
