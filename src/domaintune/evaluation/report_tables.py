"""The report's tables and text from `eval/results.json`: comparison rows, headline, facts, data card values.

The forgetting section is a table with its change chart, so it draws that chart from `report_charts`.
"""
from __future__ import annotations

import json
from typing import Any

from domaintune.evaluation.metrics import METRICS, entity_scores
from domaintune.evaluation.report_charts import change_chart

MODEL_ORDER = ("base", "tuned")
# (results key, split) rows shown under the task metrics; lower is better for all of them.
FIT_ROWS = [("loss", "validation"), ("loss", "test"), ("perplexity", "validation"), ("perplexity", "test")]
# Task and lm-eval metrics that fall as a model improves: errors, perplexities, bits per byte, translation error rate.
LOWER_IS_BETTER = {"mse", "perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter", "brier_score"}


def lower_is_better(metric: str) -> bool:
    """Whether a drop of `metric` (a results key, or lm-eval's "metric,filter") is an improvement."""
    return metric.partition(",")[0] in LOWER_IS_BETTER


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
        _row(name, {m: (model.get("metrics") or {}).get(name) for m, model in models.items()}, 3, lower_is_better(name),
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
        _row(f"{task} · {metric}", {m: dig(model, "harness", task, metric) for m, model in models.items()}, 3,
             lower_is_better(metric))
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


def headline(models: dict[str, dict], baselines: dict | None = None) -> str | None:
    """Tuned against the strongest cheap alternative where baselines were scored ('entity_f1: tuned 0.640 vs
    base k-shot 0.310: +0.330 [+0.250, +0.410], better'); else 'entity_f1: base 0.120 → tuned 0.640' for the
    first registry metric (else test perplexity)."""
    strongest = (baselines or {}).get("strongest")
    if strongest:
        reading = baselines.get("tuned_reading", "strict")
        tuned = "tuned" if reading == "strict" else f"tuned ({reading})"
        return (f"{baselines['metric']}: {tuned} {_fmt(strongest['tuned'])} vs the strongest baseline, "
                f"{baseline_name(strongest)} {_fmt(strongest['value'])}: {strongest['delta']:+.3f} "
                f"[{strongest['low']:+.3f}, {strongest['high']:+.3f}], {strongest['verdict']}")
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


def baseline_name(candidate: dict) -> str:
    reading = candidate["reading"]
    return candidate["baseline"] + ("" if reading == "strict" else f" ({reading})")


def baseline_rows(baselines: dict | None) -> list[dict]:
    """One row per baseline reading: its value, tuned minus it with the interval, the verdict; the strongest first."""
    if not baselines or not baselines.get("candidates"):
        return []
    strongest = baselines["strongest"]
    ordered = sorted(baselines["candidates"], key=lambda c: (c is not strongest, -c["value"]))
    return [{"name": baseline_name(c), "strongest": c == strongest, "value": _fmt(c["value"]), "tuned": _fmt(c["tuned"]),
             "change": f"{c['delta']:+.3f}", "ci": f"[{c['low']:+.3f}, {c['high']:+.3f}]", "verdict": c["verdict"],
             "trend": c["verdict"] if c["verdict"] in ("better", "worse") else ""} for c in ordered]


def baseline_metric_table(models: dict[str, dict], baseline_models: dict[str, dict]) -> dict | None:
    """Every metric of the baselines beside base and tuned (strict readings), so a constant answer's exact
    match shows even when the headline metric is another one."""
    if not baseline_models:
        return None
    columns = {**baseline_models, **{name: models[name] for name in ("base", "tuned") if name in models}}
    names = [name for name in metric_names(baseline_models) if "(" not in name]
    rows = [(name, [_fmt((model.get("metrics") or {}).get(name)) for model in columns.values()]) for name in names]
    return {"columns": list(columns), "rows": rows}


def class_rows(confusions: dict[str, dict]) -> dict | None:
    """Per reference label and model: precision, recall and F1, read from the confusion matrices."""
    if not confusions:
        return None
    models = sorted(confusions, key=model_rank)
    labels = confusions[models[0]]["labels"]
    rows = []
    for index, label in enumerate(labels):
        values = []
        for model in models:
            matrix, names = confusions[model]["matrix"], confusions[model]["labels"]
            at = names.index(label) if label in names else None
            correct = matrix[at][at] if at is not None else 0
            predicted = sum(row[at] for row in matrix) if at is not None else 0
            actual = sum(matrix[at]) if at is not None else 0
            precision = correct / predicted if predicted else 0.0
            recall = correct / actual if actual else 0.0
            values += [precision, recall, 2 * precision * recall / (precision + recall) if precision + recall else 0.0]
        rows.append((label, [_fmt(value) for value in values]))
    return {"columns": [(model, key) for model in models for key in ("precision", "recall", "F1")], "rows": rows}


def entity_type_f1(entities: dict[str, dict]) -> dict | None:
    """Per entity type and model: F1 from the correct, missed and spurious counts."""
    if not entities:
        return None
    models = sorted(entities, key=model_rank)
    kinds = sorted({kind for counts in entities.values() for by_kind in counts.values() for kind in by_kind})

    def f1(model: str, kind: str) -> str:
        correct, spurious, missed = (entities[model][key].get(kind, 0) for key in ("correct", "spurious", "missed"))
        return _fmt(float(entity_scores(correct, spurious, missed)["entity_f1"]))

    return {"columns": models, "rows": [(kind or "(no type)", [f1(model, kind) for model in models]) for kind in kinds]}


def eval_facts(results: dict, models: dict[str, dict]) -> list[tuple[str, str]]:
    facts = [
        (label, str(results[key]))
        for key, label in (("n_test", "test rows"), ("n_generated", "generated"), ("max_new_tokens", "max new tokens"))
        if results.get(key) is not None
    ]
    if results.get("stop"):
        facts.append(("answers end at", ", ".join(repr(stop) for stop in results["stop"])))
    facts += [
        (f"{name} eval time", f"{model['seconds']:.1f} s")
        for name, model in models.items()
        if model.get("seconds") is not None
    ]
    # Which engine wrote each model's answers: a verdict is only as exact as its engine.
    baseline_models = dig(results, "baselines", "models") or {}
    facts += [
        (f"{name} answers by", f"{model['generation']['engine']} ({model['generation']['compute_type']}"
                               + (f" on {model['generation']['device']}" if "device" in model["generation"] else "")
                               + ")"
                               + (f", {model['generation']['seconds']:.1f} s" if "seconds" in model["generation"] else ""))
        for name, model in {**models, **baseline_models}.items()
        if model.get("generation")
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


