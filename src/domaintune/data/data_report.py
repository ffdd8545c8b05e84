"""data_report.html: the data card, plotted. One self-contained file like the run report.

Charts: rows through each stage, why rows were rejected or removed, PII found by type,
length histograms per split and label balance; tables: near-duplicate pairs, contamination,
skipped documents.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jinja2

from domaintune.core.charts import new_axes, png_data_uri
from domaintune.data.cleaning import char_length

BLUE, GREY, ORANGE = "#2f6fde", "#9aa5b1", "#e8743b"
SPLIT_COLOURS = {"train": BLUE, "validation": ORANGE, "test": "#3aa57a"}
MAX_BARS = 15

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data report</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #1d2733; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #dde3ea; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eef1f4;
text-align: left; vertical-align: top; } th { font-weight: 600; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .muted { color: #6b7785; }
</style></head><body>
<h1>Data report</h1>
<p class="muted">{{ totals.read }} rows read, {{ totals.rejected }} rejected, {{ totals.removed }} removed,
{{ totals.get("augmented", 0) }} augmented, {{ totals.kept }} kept. Set-aside rows are in rejected.jsonl and removed.jsonl.</p>
<h2>Stages</h2>
<table><tr><th>stage</th><th>change</th><th>rows after</th></tr>
{% for stage in funnel %}<tr><td>{{ stage.stage }}</td><td class="n">{{ stage.change }}</td><td class="n">{{ stage.after }}</td></tr>{% endfor %}
</table>
{% for title, chart in charts %}{% if chart %}<h2>{{ title }}</h2><img src="{{ chart }}" alt="{{ title }}">{% endif %}{% endfor %}
{% if near_pairs %}<h2>Near-duplicate pairs (threshold {{ near_threshold }})</h2>
<table><tr><th>kept</th><th>removed</th><th>similarity</th></tr>
{% for pair in near_pairs %}<tr><td>{{ pair.kept }}</td><td>{{ pair.removed }}</td><td class="n">{{ pair.similarity }}</td></tr>{% endfor %}
</table>{% endif %}
{% if contamination %}<h2>Contamination (n-gram overlap with train)</h2>
<table><tr><th>evaluation set</th><th>rows</th><th>contaminated</th><th>a training row answers otherwise</th><th>examples</th></tr>
{% for name, item in contamination.items() %}<tr><td>{{ name }}</td><td class="n">{{ item.rows }}</td><td class="n">{{ item.contaminated }}</td>
<td class="n">{{ item.get("other_answer", "–") }}</td>
<td>{% for ex in item.examples %}{{ ex.file }}:{{ ex.line }} ({{ ex.overlap }}) {{ ex.text }}{% if ex.train_answer is defined %} (answer {{ ex.answer }}; in train {{ ex.train_answer }}){% endif %}<br>{% endfor %}</td></tr>{% endfor %}
</table>{% endif %}
{% if skipped %}<h2>Documents skipped</h2>
<table>{% for item in skipped %}<tr><td>{{ item.file }}</td><td>{{ item.reason }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Data card</h2><pre>{{ card_json }}</pre>
</body></html>
"""


def funnel(card: dict) -> list[dict]:
    """Each stage with its change and the rows left after it."""
    rows, out = 0, []
    for stage in card.get("stages", []):
        rows += stage.get("rows", 0) - stage.get("removed", 0) + stage.get("added", 0)
        change = f"-{stage['removed']}" if stage.get("removed") else f"+{stage['added']}" if stage.get("added") else ""
        out.append({"stage": stage["stage"], "change": change, "after": rows})
    return out


def _axes(width: float = 7.0, height: float = 3.0):
    return new_axes(width, height, dpi=100, grid=False)


def _barh(items: list[tuple[str, int]], colour: str, xlabel: str) -> str | None:
    """Horizontal bars, first item on top."""
    if not items:
        return None
    figure, axes = _axes(7.0, 0.8 + 0.3 * len(items))
    labels = [label if len(label) <= 60 else label[:57] + "..." for label, _ in items]
    bars = axes.barh(labels[::-1], [n for _, n in items][::-1], color=colour)
    axes.bar_label(bars, fontsize=8, padding=2)
    axes.set_xlabel(xlabel)
    axes.margins(x=0.12)
    return png_data_uri(figure)


def _largest(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: -item[1])[:MAX_BARS]


def length_chart(lengths: dict[str, list[int]], unit: str) -> str | None:
    lengths = {split: values for split, values in lengths.items() if values}
    if not lengths:
        return None
    figure, axes = _axes()
    top = max(max(values) for values in lengths.values())
    bins = [top * i / 30 for i in range(31)] if top else 1
    for split, values in lengths.items():
        # Shares, not counts: a 55-row split's shape is then comparable with a 900-row one.
        weights = [1 / len(values)] * len(values)
        axes.hist(values, bins=bins, weights=weights, alpha=0.55, label=f"{split} ({len(values)})", color=SPLIT_COLOURS.get(split))
    axes.set_xlabel(f"length ({unit})")
    axes.set_ylabel("share of the split's rows")
    axes.legend(frameon=False)
    return png_data_uri(figure)


def label_chart(labels: dict[str, dict[str, int]]) -> str | None:
    names = list(dict.fromkeys(name for counts in labels.values() for name in counts))[:MAX_BARS]
    if not names:
        return None
    figure, axes = _axes(max(5.0, 0.6 * len(names) + 2), 3.0)
    width = 0.8 / len(labels)
    for i, (split, counts) in enumerate(labels.items()):
        offsets = [x + (i - (len(labels) - 1) / 2) * width for x in range(len(names))]
        axes.bar(offsets, [counts.get(name, 0) for name in names], width, label=split, color=SPLIT_COLOURS.get(split))
    axes.set_xticks(range(len(names)), names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    axes.set_ylabel("rows")
    axes.legend(frameon=False)
    return png_data_uri(figure)


def write_data_report(
    out_dir: Path, card: dict, splits: dict[str, list[dict]], count_tokens: Callable[[dict], int] | None
) -> Path:
    totals = card["totals"]
    measure, unit = (count_tokens, "tokens") if count_tokens is not None else (char_length, "characters")
    lengths = {split: [measure(row) for row in rows] for split, rows in splits.items()}
    reasons = {f"rejected: {reason}": n for reason, n in card.get("rejected_reasons", {}).items()}
    reasons.update({f"removed: {kind}": n for kind, n in totals.get("removed_by_reason", {}).items()})
    charts = [
        ("Rows through the stages", _barh([(s["stage"], s["after"]) for s in funnel(card)], BLUE, "rows after the stage")),
        ("Why rows were rejected or removed", _barh(_largest(reasons), ORANGE, "rows")),
        (f"PII found by type ({card['pii']['mode']})", _barh(_largest(card["pii"]["found"]), GREY, "occurrences")),
        ("Length per split", length_chart(lengths, unit)),
        ("Label balance", label_chart(card.get("labels", {}))),
    ]
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.from_string(TEMPLATE).render(
        totals=totals,
        funnel=funnel(card),
        charts=charts,
        near_pairs=card["near_duplicates"]["examples"],
        near_threshold=card["near_duplicates"]["threshold"],
        contamination=card.get("contamination") or {},
        skipped=card.get("documents_skipped") or [],
        card_json=json.dumps(card, indent=2, ensure_ascii=False),
    )
    path = Path(out_dir) / "data_report.html"
    path.write_text(html, encoding="utf-8")
    return path
