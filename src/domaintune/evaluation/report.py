"""Render a run directory into one self-contained HTML report.

CSS and charts (base64 PNG) are inlined so `report.html` can be mailed or attached to a
ticket and still open offline. Only `eval/results.json` is required; every other input
(and every optional part of the results: intervals, forgetting probes, error analysis)
adds its section when present.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from matplotlib.figure import Figure

from domaintune.core.errors import DomaintuneError
from domaintune.core.charts import new_axes, png_data_uri
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

    comparison = results.get("comparison") or {}
    task_rows, fit_rows = _comparison_rows(models, comparison)
    forgetting = results.get("forgetting") or {}
    errors = results.get("errors") or {}
    html = _template().render(
        title=recipe.get("name") or run_dir.name,
        model=_dig(recipe, "model", "name"),
        method=_dig(recipe, "method", "name"),
        run_name=run_dir.name,
        headline=_headline(models),
        columns=list(models),
        compare="base" in models and "tuned" in models,
        intervals=bool(comparison),
        task_rows=task_rows,
        fit_rows=fit_rows,
        eval_facts=_eval_facts(results, models),
        metrics_chart=_metrics_chart(models),
        confidence=_confidence_note(results.get("confidence")),
        change_chart=_change_chart({row["label"]: comparison[row["label"]] for row in task_rows if row["ci"]}),
        forgetting=_forgetting_section(forgetting, models),
        regressions=errors.get("regressions"),
        entity_errors=_entity_error_rows(errors.get("entities") or {}),
        entity_chart=_entity_chart(errors.get("entities") or {}),
        harness_rows=_harness_rows(models),
        judge=results.get("judge"),
        judge_chart=_judge_chart(results.get("judge")),
        confusions=[(name, _confusion_chart(matrix)) for name, matrix in (errors.get("labels") or {}).items()],
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
        data_report="data/data_report.html" if (run_dir / "data" / "data_report.html").exists() else None,
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


def _row(label: str, values: dict[str, Any], digits: int, lower_is_better: bool, interval: dict | None = None) -> dict:
    change, trend, ci, verdict = "", "", "", ""
    if values.get("base") is not None and values.get("tuned") is not None:
        delta = values["tuned"] - values["base"]
        change = f"{delta:+.{digits}f}"
        if interval:
            # With an interval, colour only what it shows clearly; the verdict says it in words.
            ci, verdict = f"[{interval['low']:+.{digits}f}, {interval['high']:+.{digits}f}]", interval["verdict"]
            trend = verdict if verdict in ("better", "worse") else ""
        elif round(delta, digits):
            trend = "better" if (delta < 0) == lower_is_better else "worse"
    return {"label": label, "values": [_fmt(v, digits) for v in values.values()], "change": change, "trend": trend,
            "ci": ci, "verdict": verdict}


def _metric_names(models: dict[str, dict]) -> list[str]:
    names: dict[str, None] = {}  # ordered set: first model's order, then any extras
    for model in models.values():
        names.update(dict.fromkeys(model.get("metrics") or {}))
    return list(names)


def _comparison_rows(models: dict[str, dict], comparison: dict) -> tuple[list[dict], list[dict]]:
    task_rows = [
        _row(name, {m: (model.get("metrics") or {}).get(name) for m, model in models.items()}, 3, False,
             comparison.get(name))
        for name in _metric_names(models)
    ]
    fit_rows = []
    # Beyond validation and test: any split a model reports (multitask: "test · ner").
    extra = [split for model in models.values() for split in (model.get("loss") or {}) if ("loss", split) not in FIT_ROWS]
    rows = FIT_ROWS + [(key, split) for key in ("loss", "perplexity") for split in dict.fromkeys(extra)]
    for key, split in rows:
        values = {m: _dig(model, key, split) for m, model in models.items()}
        if any(v is not None for v in values.values()):
            label = f"{key} ({split})"
            fit_rows.append(_row(label, values, 2 if key == "perplexity" else 3, True, comparison.get(label)))
    return task_rows, fit_rows


def _confidence_note(confidence: dict | None) -> str | None:
    if not confidence:
        return None
    return (f"Intervals: {confidence['confidence']:.0%} {confidence['method']}, {confidence['resamples']:,} "
            "resamples. A change is called better or worse only when its whole interval lies on one side of zero.")


def _forgetting_section(forgetting: dict, models: dict[str, dict]) -> dict | None:
    """Probe accuracy per category (rows) and model, with the change's interval when both models ran."""
    accuracies = {name: _dig(model, "probes", "accuracy") for name, model in models.items()}
    accuracies = {name: value for name, value in accuracies.items() if value}
    if not accuracies:
        return None
    comparison = forgetting.get("comparison") or {}
    categories = list(next(iter(accuracies.values())))
    rows = [
        {**_row(category, {name: acc.get(category) for name, acc in accuracies.items()}, 3, False,
                comparison.get(category)), "items": (forgetting.get("items") or {}).get(category, "")}
        for category in categories
    ]
    overall = comparison.get("overall")
    summary = None
    if overall:
        summary = (f"General ability: base {overall['base']:.3f} → tuned {overall['tuned']:.3f} "
                   f"({overall['delta']:+.3f}, interval [{overall['low']:+.3f}, {overall['high']:+.3f}]): "
                   f"{overall['verdict']}.")
    seconds = [f"{name} {model['probes']['seconds']:.1f} s" for name, model in models.items()
               if _dig(model, "probes", "seconds") is not None]
    return {
        "source": forgetting.get("source"),
        "summary": summary,
        "rows": rows,
        "seconds": ", ".join(seconds),
        "chart": _change_chart({category: comparison[category] for category in categories if category in comparison}),
    }


def _harness_rows(models: dict[str, dict]) -> list[dict]:
    """lm-eval scores: one row per (task, metric,filter), one column per model, with the change."""
    keys: dict[tuple[str, str], None] = {}
    for model in models.values():
        keys.update(dict.fromkeys((task, metric) for task, scores in (model.get("harness") or {}).items() for metric in scores))
    return [
        _row(f"{task} · {metric}", {m: _dig(model, "harness", task, metric) for m, model in models.items()}, 3, False)
        for task, metric in keys
    ]


def _entity_error_rows(entities: dict[str, dict]) -> dict | None:
    """One row per entity TYPE: correct, missed and spurious counts for each model."""
    if not entities:
        return None
    kinds = sorted({kind for counts in entities.values() for by_kind in counts.values() for kind in by_kind})
    columns = [(model, key) for model in sorted(entities, key=_model_rank) for key in ("correct", "missed", "spurious")]
    rows = [(kind or "(no type)", [entities[model][key].get(kind, 0) for model, key in columns]) for kind in kinds]
    return {"columns": columns, "rows": rows}


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


def _loss_chart(records: list[dict]) -> str | None:
    curves = {
        "training loss": [(r["step"], r["loss"]) for r in records if "step" in r and "loss" in r],
        "validation loss": [(r["step"], r["eval_loss"]) for r in records if "step" in r and "eval_loss" in r],
    }
    if not any(curves.values()):
        return None
    figure, axes = new_axes()
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
    figure, axes = new_axes(max(5.0, 1.1 * len(names) + 2), 3.4)
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


def _change_chart(comparison: dict[str, dict]) -> str | None:
    """Tuned minus base per metric, with its interval as an error bar: a bar clear of zero is a real change."""
    if not comparison:
        return None
    names = list(comparison)
    figure, axes = new_axes(7.0, 0.45 * len(names) + 1.2)
    axes.grid(axis="y", visible=False)
    axes.grid(axis="x", alpha=0.3)
    for y, name in enumerate(names):
        entry = comparison[name]
        colour = {"better": "#1e8e3e", "worse": "#c5221f"}.get(entry["verdict"], COLOURS["base"])
        error = [[entry["delta"] - entry["low"]], [entry["high"] - entry["delta"]]]
        axes.errorbar(entry["delta"], y, xerr=error, fmt="o", color=colour, capsize=4, linewidth=1.6)
    axes.axvline(0, color="#616e7c", linewidth=1)
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xlabel("change, tuned − base (with interval)")
    return png_data_uri(figure)


def _judge_chart(judge: dict | None) -> str | None:
    """One bar split into tuned wins, ties and base wins."""
    if not judge:
        return None
    figure, axes = new_axes(7.0, 1.4)
    axes.grid(visible=False)
    left = 0
    for name, colour in (("tuned", COLOURS["tuned"]), ("tie", "#e4e7eb"), ("base", COLOURS["base"])):
        count = judge["wins"][name]
        axes.barh(0, count, left=left, color=colour, label=f"{name} {'wins' if name != 'tie' else ''} ({count})")
        left += count
    axes.set_yticks([])
    axes.set_xlim(0, max(left, 1))
    axes.set_xlabel("judged items")
    axes.legend(frameon=False, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return png_data_uri(figure)


def _entity_chart(entities: dict[str, dict]) -> str | None:
    """Missed and spurious entities per TYPE, base beside tuned."""
    table = _entity_error_rows(entities)
    if not table or not table["rows"]:
        return None
    kinds = [kind for kind, _ in table["rows"]]
    series = [(model, key) for model, key in table["columns"] if key != "correct"]
    figure, axes = new_axes(max(5.0, 1.4 * len(kinds) + 2), 3.2)
    width = 0.8 / len(series)
    for i, (model, key) in enumerate(series):
        counts = [values[table["columns"].index((model, key))] for _, values in table["rows"]]
        offsets = [x + (i - (len(series) - 1) / 2) * width for x in range(len(kinds))]
        axes.bar(offsets, counts, width, label=f"{model} {key}", color=COLOURS.get(model),
                 hatch="//" if key == "spurious" else None, edgecolor="white")
    axes.set_xticks(range(len(kinds)), kinds)
    axes.set_ylabel("entities")
    axes.legend(frameon=False, ncols=len(series), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return png_data_uri(figure)


def _confusion_chart(confusion: dict) -> str:
    labels, matrix = confusion["labels"], confusion["matrix"]
    side = 1.2 + 0.5 * len(labels)
    figure = Figure(figsize=(side + 1.5, side), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(j, i, count, ha="center", va="center", fontsize=8, color="white" if count > peak / 2 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return png_data_uri(figure)


def _splits_chart(splits: dict) -> str | None:
    counts = {name: n for name, n in splits.items() if isinstance(n, (int, float)) and not isinstance(n, bool)}
    if not counts:
        return None
    figure, axes = new_axes(max(4.0, 1.2 * len(counts) + 1.5), 2.8)
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
