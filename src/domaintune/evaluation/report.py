"""Render a run directory into one self-contained HTML report.

CSS and charts (base64 PNG) are inlined so `report.html` can be mailed or attached to a
ticket and still open offline. Only `eval/results.json` is required; every other input
adds its section when present.
"""
from __future__ import annotations

import base64
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from domaintune.errors import DomaintuneError
from domaintune.evaluation.metrics import METRICS

DEFAULT_SAMPLES = 12  # when the recipe does not set evaluation.report_samples
MODEL_ORDER = ("base", "tuned")
COLOURS = {"base": "#9aa5b1", "tuned": "#2f6fde"}
# (results key, split) rows shown under the task metrics; lower is better for all of them.
FIT_ROWS = [("loss", "validation"), ("loss", "test"), ("perplexity", "validation"), ("perplexity", "test")]


def write_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` from the run's recipe, logs, evaluation and data card."""
    run_dir = Path(run_dir)
    results = _read_json(run_dir / "eval" / "results.json", required=True)
    models = results.get("models") if isinstance(results, dict) else None
    if not isinstance(models, dict) or not models:
        raise DomaintuneError(f"{run_dir / 'eval' / 'results.json'}: no 'models' to report on")
    models = {name: models[name] for name in sorted(models, key=_model_rank)}

    recipe_text, recipe = _read_recipe(run_dir / "recipe.yaml")
    data_card = _read_json(run_dir / "data" / "data_card.json") or {}
    splits = data_card.get("splits") if isinstance(data_card.get("splits"), dict) else {}
    shown = _dig(recipe, "evaluation", "report_samples")
    samples = _read_jsonl(run_dir / "eval" / "samples.jsonl")[: DEFAULT_SAMPLES if shown is None else shown]

    task_rows, fit_rows = _comparison_rows(models)
    html = _template().render(
        title=recipe.get("name") or run_dir.name,
        model=_dig(recipe, "model", "name"),
        method=_dig(recipe, "method", "name"),
        run_name=run_dir.name,
        headline=_headline(models),
        columns=list(models),
        compare="base" in models and "tuned" in models,
        task_rows=task_rows,
        fit_rows=fit_rows,
        eval_facts=_eval_facts(results, models),
        metrics_chart=_metrics_chart(models),
        loss_chart=_loss_chart(_read_jsonl(run_dir / "metrics.jsonl")),
        samples=samples,
        show_base=any(sample.get("base") is not None for sample in samples),
        card_overview=[(key, _card_value(value)) for key, value in data_card.items() if not isinstance(value, dict)],
        card_tables=[
            (key, [(k, _card_value(v)) for k, v in value.items()])
            for key, value in data_card.items()
            if isinstance(value, dict)
        ],
        splits_chart=_splits_chart(splits),
        recipe_text=recipe_text,
    )
    path = run_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


# --- reading the run directory ------------------------------------------------------------


def _read_json(path: Path, required: bool = False) -> Any:
    if not path.is_file():
        if required:
            raise DomaintuneError(f"{path} not found: evaluate the run before writing its report")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DomaintuneError(f"{path}: not valid JSON ({error})") from error


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        # A run killed mid-write leaves a partial last line; the rest is still worth showing.
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_recipe(path: Path) -> tuple[str | None, dict]:
    if not path.is_file():
        return None, {}
    text = path.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DomaintuneError(f"{path}: not valid YAML ({error})") from error
    return text, recipe if isinstance(recipe, dict) else {}


def _dig(mapping: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _model_rank(name: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER), name)


# --- tables and headline ------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _row(label: str, values: dict[str, Any], digits: int, lower_is_better: bool) -> dict:
    change, trend = "", ""
    if values.get("base") is not None and values.get("tuned") is not None:
        delta = values["tuned"] - values["base"]
        change = f"{delta:+.{digits}f}"
        if round(delta, digits):
            trend = "better" if (delta < 0) == lower_is_better else "worse"
    return {"label": label, "values": [_fmt(v, digits) for v in values.values()], "change": change, "trend": trend}


def _metric_names(models: dict[str, dict]) -> list[str]:
    names: dict[str, None] = {}  # ordered set: first model's order, then any extras
    for model in models.values():
        names.update(dict.fromkeys(model.get("metrics") or {}))
    return list(names)


def _comparison_rows(models: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    task_rows = [
        _row(name, {m: (model.get("metrics") or {}).get(name) for m, model in models.items()}, 3, False)
        for name in _metric_names(models)
    ]
    fit_rows = []
    for key, split in FIT_ROWS:
        values = {m: _dig(model, key, split) for m, model in models.items()}
        if any(v is not None for v in values.values()):
            fit_rows.append(_row(f"{key} ({split})", values, 2 if key == "perplexity" else 3, True))
    return task_rows, fit_rows


def _headline(models: dict[str, dict]) -> str | None:
    """'entity_f1: base 0.120 → tuned 0.640' for the first registry metric (else test perplexity)."""
    names = _metric_names(models)
    if names:
        # entity_f1 reports precision and recall first; headline the metric the recipe named.
        label = next((name for name in names if name in METRICS), names[0])
        values, digits = {m: (model.get("metrics") or {}).get(label) for m, model in models.items()}, 3
    else:
        label, digits = "perplexity (test)", 2
        values = {m: _dig(model, "perplexity", "test") for m, model in models.items()}
    shown = [f"{name} {_fmt(value, digits)}" for name, value in values.items() if value is not None]
    return f"{label}: {' → '.join(shown)}" if shown else None


def _eval_facts(results: dict, models: dict[str, dict]) -> list[tuple[str, str]]:
    facts = [
        (label, str(results[key]))
        for key, label in (("n_test", "test rows"), ("n_generated", "generated"), ("max_new_tokens", "max new tokens"))
        if results.get(key) is not None
    ]
    facts += [
        (f"{name} eval time", f"{model['seconds']:.1f} s")
        for name, model in models.items()
        if model.get("seconds") is not None
    ]
    return facts


def _card_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and not any(isinstance(item, (list, dict)) for item in value):
        return ", ".join(_card_value(item) for item in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


# --- charts -------------------------------------------------------------------------------


def png_data_uri(figure: Figure) -> str:
    # The Agg canvas is attached to this figure only, so no global pyplot/backend state changes.
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _axes(width: float = 7.0, height: float = 3.2):
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def _loss_chart(records: list[dict]) -> str | None:
    curves = {
        "training loss": [(r["step"], r["loss"]) for r in records if "step" in r and "loss" in r],
        "validation loss": [(r["step"], r["eval_loss"]) for r in records if "step" in r and "eval_loss" in r],
    }
    if not any(curves.values()):
        return None
    figure, axes = _axes()
    for (label, points), style in zip(curves.items(), ({"color": "#2f6fde"}, {"color": "#e8743b", "marker": "o"})):
        if points:
            steps, losses = zip(*points)
            axes.plot(steps, losses, label=label, linewidth=1.6, **style)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend(frameon=False)
    return png_data_uri(figure)


def _metrics_chart(models: dict[str, dict]) -> str | None:
    names = _metric_names(models)
    if not names:
        return None
    figure, axes = _axes(max(5.0, 1.1 * len(names) + 2), 3.4)
    width = 0.8 / len(models)
    for i, (model_name, model) in enumerate(models.items()):
        values = [(model.get("metrics") or {}).get(name) for name in names]
        offsets = [x + (i - (len(models) - 1) / 2) * width for x in range(len(names))]
        # A metric one model lacks gets no bar and no label rather than a misleading 0.
        heights = [float("nan") if v is None else v for v in values]
        bars = axes.bar(offsets, heights, width, label=model_name, color=COLOURS.get(model_name))
        axes.bar_label(bars, ["" if v is None else f"{v:.2f}" for v in values], fontsize=8, padding=2)
    crowded = len(names) > 4
    axes.set_xticks(range(len(names)), names, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axes.set_ylim(0, 1.12)
    axes.legend(frameon=False, ncols=len(models), loc="upper left")
    return png_data_uri(figure)


def _splits_chart(splits: dict) -> str | None:
    counts = {name: n for name, n in splits.items() if isinstance(n, (int, float)) and not isinstance(n, bool)}
    if not counts:
        return None
    figure, axes = _axes(max(4.0, 1.2 * len(counts) + 1.5), 2.8)
    bars = axes.bar(list(counts), list(counts.values()), 0.6, color="#2f6fde")
    axes.bar_label(bars, fontsize=8, padding=2)
    axes.set_ylabel("rows")
    axes.margins(y=0.15)
    return png_data_uri(figure)


def _template() -> jinja2.Template:
    source = resources.files("domaintune.evaluation").joinpath("report.html.j2").read_text(encoding="utf-8")
    # Autoescape: prompts and model outputs are untrusted text and must not become markup.
    environment = jinja2.Environment(
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    return environment.from_string(source)
