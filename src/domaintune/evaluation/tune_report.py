"""The hyper-parameter search report: one self-contained HTML page about an optuna study.

Charts are base64 PNGs (matplotlib `Figure`, no pyplot state), like the run report, so the page
opens offline. `trial_rows` is shared with the terminal table so both show the same numbers.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import jinja2
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from domaintune.core.charts import png_data_uri

BEST, COMPLETE, PRUNED = "#e8743b", "#2f6fde", "#9aa5b1"


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    return min(completed, key=lambda t: t.value) if completed else None


def param_names(trials: list[FrozenTrial]) -> list[str]:
    names: dict[str, None] = {}  # ordered set: a resumed study may have searched other keys earlier
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def trial_rows(trials: list[FrozenTrial]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows: trial, state, validation loss, one column per parameter, seconds."""
    names = param_names(trials)
    rows = [
        [
            str(trial.number),
            trial.state.name.lower(),
            "–" if trial.value is None else f"{trial.value:.4f}",  # a pruned trial's value is its last report
            *(_fmt(trial.params[name]) if name in trial.params else "–" for name in names),
            "–" if trial.duration is None else f"{trial.duration.total_seconds():.1f}",
        ]
        for trial in trials
    ]
    return ["trial", "state", "validation loss", *names, "seconds"], rows


def write_tune_report(trials: list[FrozenTrial], path: Path, study_name: str) -> Path:
    best = best_trial(trials)
    header, rows = trial_rows(trials)
    html = _TEMPLATE.render(
        study_name=study_name,
        counts=" · ".join(f"{n} {state}" for state, n in Counter(t.state.name.lower() for t in trials).items()),
        best=best,
        best_params=[(name, _fmt(value)) for name, value in best.params.items()] if best else [],
        best_run=best.user_attrs.get("run_dir") if best else None,
        charts=[
            (title, chart)
            for title, chart in (
                ("Optimisation history", _history_chart(trials)),
                ("Parameters against validation loss", _params_chart(trials)),
                ("Validation loss during training", _curves_chart(trials, best)),
            )
            if chart
        ],
        header=header,
        rows=rows,
    )
    path.write_text(html, encoding="utf-8")
    return path


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figure(panels: int = 1) -> tuple[Figure, list]:
    width = 7.0 if panels == 1 else min(3.4 * panels, 11.0)
    figure = Figure(figsize=(width, 3.2), dpi=110, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0].tolist()
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.3)
    return figure, axes


def _history_chart(trials: list[FrozenTrial]) -> str | None:
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    if not completed and not pruned:
        return None
    figure, (axes,) = _figure()
    if completed:
        numbers, values = [t.number for t in completed], [t.value for t in completed]
        axes.scatter(numbers, values, color=COMPLETE, label="trial", zorder=3)
        best_so_far = [min(values[: i + 1]) for i in range(len(values))]
        axes.step(numbers, best_so_far, where="post", color=BEST, label="best so far")
    if pruned:
        numbers, values = [t.number for t in pruned], [t.value for t in pruned]
        axes.scatter(numbers, values, color=PRUNED, marker="x", label="pruned (last report)")
    axes.set_xlabel("trial")
    axes.set_ylabel("validation loss")
    axes.legend(frameon=False)
    return png_data_uri(figure)


def _params_chart(trials: list[FrozenTrial]) -> str | None:
    # Pruned trials stopped early, so their loss is not comparable: completed trials only.
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    names = param_names(completed)
    if not names:
        return None
    figure, axes = _figure(len(names))
    for ax, name in zip(axes, names):
        points = [t for t in completed if name in t.params]
        distribution = points[0].distributions[name]
        if isinstance(distribution, CategoricalDistribution):
            # Choices may be strings or None: plot them at their index, labelled.
            labels = [_fmt(choice) for choice in distribution.choices]
            xs = [distribution.choices.index(t.params[name]) for t in points]
            ax.set_xticks(range(len(labels)), labels)
        else:
            xs = [t.params[name] for t in points]
            if distribution.log:
                ax.set_xscale("log")
        ax.scatter(xs, [t.value for t in points], color=COMPLETE)
        ax.set_xlabel(name)
    axes[0].set_ylabel("validation loss")
    return png_data_uri(figure)


def _curves_chart(trials: list[FrozenTrial], best: FrozenTrial | None) -> str | None:
    reported = [t for t in trials if t.intermediate_values]
    if not reported:
        return None
    figure, (axes,) = _figure()
    # Pruned curves first, the best one last so it is drawn on top.
    for trial in sorted(reported, key=lambda t: (t is best, t.state != TrialState.PRUNED)):
        steps = sorted(trial.intermediate_values)
        if trial is best:
            style = {"color": BEST, "linewidth": 2.2, "label": f"best (trial {trial.number})"}
        elif trial.state == TrialState.PRUNED:
            style = {"color": PRUNED, "linestyle": "--"}
        else:
            style = {"color": COMPLETE, "alpha": 0.6}
        axes.plot(steps, [trial.intermediate_values[s] for s in steps], marker="o", markersize=3, **style)
    axes.set_xlabel("step")
    axes.set_ylabel("validation loss")
    if best is not None:
        axes.legend(frameon=False)
    return png_data_uri(figure)


_TEMPLATE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ study_name }} · domaintune search</title>
<style>
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; }
  main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
  h2 { margin: 32px 0 12px; font-size: 19px; border-bottom: 1px solid #e4e7eb; padding-bottom: 6px; }
  .meta { color: #616e7c; }
  .headline { padding: 14px 18px; background: #f5f7fa; border-left: 4px solid #2f6fde; font-size: 18px; }
  table { border-collapse: collapse; font-size: 14px; }
  th, td { padding: 5px 12px; border-bottom: 1px solid #e4e7eb; text-align: right; font-variant-numeric: tabular-nums; }
  th { background: #f5f7fa; }
  img { max-width: 100%; height: auto; }
</style>
</head>
<body>
<main>
<h1>Hyper-parameter search: {{ study_name }}</h1>
<p class="meta">{{ counts }}</p>
{% if best %}
<p class="headline">Best: trial {{ best.number }}, validation loss <strong>{{ "%.4f"|format(best.value) }}</strong>
  {% for name, value in best_params %}· {{ name }} = {{ value }} {% endfor %}</p>
{% if best_run %}<p class="meta">run directory <code>{{ best_run }}</code></p>{% endif %}
{% else %}
<p class="headline">No trial has completed yet.</p>
{% endif %}
{% for title, chart in charts %}
<h2>{{ title }}</h2>
<img src="{{ chart }}" alt="{{ title }}">
{% endfor %}
<h2>Trials</h2>
<table>
<tr>{% for name in header %}<th>{{ name }}</th>{% endfor %}</tr>
{% for row in rows %}
<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</table>
</main>
</body>
</html>
"""
)
