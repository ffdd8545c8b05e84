"""The report's tables and text from `eval/results.json`: comparison rows, headline, facts, data card values.

The forgetting section is a table with its change chart, so it draws that chart from `report_charts`.
"""
from __future__ import annotations

import json
from typing import Any

from domaintune.evaluation.metrics import METRICS
from domaintune.evaluation.report_charts import change_chart

MODEL_ORDER = ("base", "tuned")
# (results key, split) rows shown under the task metrics; lower is better for all of them.
FIT_ROWS = [("loss", "validation"), ("loss", "test"), ("perplexity", "validation"), ("perplexity", "test")]


def dig(mapping: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def model_rank(name: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER), name)


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


def metric_names(models: dict[str, dict]) -> list[str]:
    names: dict[str, None] = {}  # ordered set: first model's order, then any extras
    for model in models.values():
        names.update(dict.fromkeys(model.get("metrics") or {}))
    return list(names)


def comparison_rows(models: dict[str, dict], comparison: dict) -> tuple[list[dict], list[dict]]:
    task_rows = [
        _row(name, {m: (model.get("metrics") or {}).get(name) for m, model in models.items()}, 3, False,
             comparison.get(name))
        for name in metric_names(models)
    ]
    fit_rows = []
    # Beyond validation and test: any split a model reports (multitask: "test · ner").
    extra = [split for model in models.values() for split in (model.get("loss") or {}) if ("loss", split) not in FIT_ROWS]
    rows = FIT_ROWS + [(key, split) for key in ("loss", "perplexity") for split in dict.fromkeys(extra)]
    for key, split in rows:
        values = {m: dig(model, key, split) for m, model in models.items()}
        if any(v is not None for v in values.values()):
            label = f"{key} ({split})"
            fit_rows.append(_row(label, values, 2 if key == "perplexity" else 3, True, comparison.get(label)))
    return task_rows, fit_rows


def confidence_note(confidence: dict | None) -> str | None:
    if not confidence:
        return None
    return (f"Intervals: {confidence['confidence']:.0%} {confidence['method']}, {confidence['resamples']:,} "
            "resamples. A change is called better or worse only when its whole interval lies on one side of zero.")


def forgetting_section(forgetting: dict, models: dict[str, dict]) -> dict | None:
    """Probe accuracy per category (rows) and model, with the change's interval when both models ran."""
    accuracies = {name: dig(model, "probes", "accuracy") for name, model in models.items()}
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
               if dig(model, "probes", "seconds") is not None]
    return {
        "source": forgetting.get("source"),
        "summary": summary,
        "rows": rows,
        "seconds": ", ".join(seconds),
        "chart": change_chart({category: comparison[category] for category in categories if category in comparison}),
    }


def harness_rows(models: dict[str, dict]) -> list[dict]:
    """lm-eval scores: one row per (task, metric,filter), one column per model, with the change."""
    keys: dict[tuple[str, str], None] = {}
    for model in models.values():
        keys.update(dict.fromkeys((task, metric) for task, scores in (model.get("harness") or {}).items() for metric in scores))
    return [
        _row(f"{task} · {metric}", {m: dig(model, "harness", task, metric) for m, model in models.items()}, 3, False)
        for task, metric in keys
    ]


def entity_error_rows(entities: dict[str, dict]) -> dict | None:
    """One row per entity TYPE: correct, missed and spurious counts for each model."""
    if not entities:
        return None
    kinds = sorted({kind for counts in entities.values() for by_kind in counts.values() for kind in by_kind})
    columns = [(model, key) for model in sorted(entities, key=model_rank) for key in ("correct", "missed", "spurious")]
    rows = [(kind or "(no type)", [entities[model][key].get(kind, 0) for model, key in columns]) for kind in kinds]
    return {"columns": columns, "rows": rows}


def headline(models: dict[str, dict]) -> str | None:
    """'entity_f1: base 0.120 → tuned 0.640' for the first registry metric (else test perplexity)."""
    names = metric_names(models)
    if names:
        # entity_f1 reports precision and recall first; headline the metric the recipe named.
        label = next((name for name in names if name in METRICS), names[0])
        values, digits = {m: (model.get("metrics") or {}).get(label) for m, model in models.items()}, 3
    else:
        label, digits = "perplexity (test)", 2
        values = {m: dig(model, "perplexity", "test") for m, model in models.items()}
    shown = [f"{name} {_fmt(value, digits)}" for name, value in values.items() if value is not None]
    return f"{label}: {' → '.join(shown)}" if shown else None


def eval_facts(results: dict, models: dict[str, dict]) -> list[tuple[str, str]]:
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


def card_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and not any(isinstance(item, (list, dict)) for item in value):
        return ", ".join(card_value(item) for item in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


