"""The report's charts: one matplotlib figure per section, returned as a base64 PNG data URI."""
from __future__ import annotations

from matplotlib.figure import Figure

from domaintune.core.charts import new_axes, png_data_uri

COLOURS = {"base": "#9aa5b1", "tuned": "#2f6fde"}


def loss_chart(records: list[dict]) -> str | None:
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


def metrics_chart(models: dict[str, dict], names: list[str]) -> str | None:
    """Each model's task metrics (`names`, in that order) as grouped bars."""
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


def change_chart(comparison: dict[str, dict]) -> str | None:
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


def judge_chart(judge: dict | None) -> str | None:
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


def entity_chart(table: dict | None) -> str | None:
    """Missed and spurious entities per TYPE, base beside tuned, from `report_tables.entity_error_rows`."""
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


def confusion_chart(confusion: dict) -> str:
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


def splits_chart(splits: dict) -> str | None:
    counts = {name: n for name, n in splits.items() if isinstance(n, (int, float)) and not isinstance(n, bool)}
    if not counts:
        return None
    figure, axes = new_axes(max(4.0, 1.2 * len(counts) + 1.5), 2.8)
    bars = axes.bar(list(counts), list(counts.values()), 0.6, color="#2f6fde")
    axes.bar_label(bars, fontsize=8, padding=2)
    axes.set_ylabel("rows")
    axes.margins(y=0.15)
    return png_data_uri(figure)
