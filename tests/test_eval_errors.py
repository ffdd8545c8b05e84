"""Error analysis on known inputs, and the report sections for intervals, forgetting and errors."""
import json
import re

import numpy as np

from domaintune.evaluation.errors_analysis import OTHER, label_confusion, regressions
from domaintune.evaluation.metrics import entity_errors
from domaintune.evaluation.report import write_report


def test_confusion_matrix_reads_labels_like_accuracy_and_folds_unknown_predictions():
    references = ["positive", "negative", "positive", "neutral"]
    predictions = ["Positive.", "positive", '"positive"\nbecause', "I am not sure"]
    confusion = label_confusion(predictions, references)
    assert confusion["labels"] == ["positive", "negative", "neutral", OTHER]
    assert confusion["matrix"] == [
        [2, 0, 0, 0],  # both positives right
        [1, 0, 0, 0],  # negative taken for positive
        [0, 0, 0, 1],  # neutral answered with something that is no label
        [0, 0, 0, 0],
    ]


def test_regressions_list_the_largest_drops_first():
    samples = [{"prompt": f"p{i}", "reference": "r", "base": "b", "tuned": "t"} for i in range(5)]
    found = regressions(samples, np.array([1.0, 0.5, 1.0, 0.2, 0.0]), np.array([0.0, 0.5, 0.7, 0.4, 0.0]),
                        "entity_f1", limit=5)
    assert (found["worse"], found["better"], found["same"]) == (2, 1, 2)
    assert [item["prompt"] for item in found["items"]] == ["p0", "p2"]
    assert found["items"][1]["base_score"] == 1.0 and found["items"][1]["tuned_score"] == 0.7
    assert len(regressions(samples, np.ones(5), np.zeros(5), "exact_match", limit=3)["items"]) == 3


def _run(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    entry = lambda b, t, low, high, v: {"base": b, "tuned": t, "delta": t - b, "low": low, "high": high, "verdict": v}
    references = ["[Acme - ORG, Berlin - LOC]", "[Bob - PER]"]
    base, tuned = ["No entities found", "[Bob - PER]"], ["[Acme - ORG, Paris - LOC]", "No entities found"]
    results = {
        "models": {
            name: {"metrics": {"entity_f1": f1}, "loss": {"test": loss}, "perplexity": {"test": None},
                   "probes": {"accuracy": {"overall": acc, "knowledge": acc}, "seconds": 3.0}}
            for name, f1, loss, acc in (("base", 0.2, 2.0, 0.6), ("tuned", 0.6, 1.0, 0.55))
        },
        "confidence": {"confidence": 0.95, "resamples": 2000, "seed": 0, "method": "paired bootstrap over test items (percentile)"},
        "comparison": {"entity_f1": entry(0.2, 0.6, 0.25, 0.55, "better"),
                       "loss (test)": entry(2.0, 1.0, -1.2, -0.8, "better")},
        "forgetting": {"source": "built-in general probes", "items": {"overall": 40, "knowledge": 40},
                       "comparison": {"overall": entry(0.6, 0.55, -0.12, 0.02, "no clear difference"),
                                      "knowledge": entry(0.6, 0.55, -0.12, 0.02, "no clear difference")}},
        "errors": {
            "regressions": regressions(
                [{"prompt": "Bob <works>", "reference": references[1], "base": base[1], "tuned": tuned[1]}],
                np.array([1.0]), np.array([0.0]), "entity_f1", 10),
            "entities": {"base": entity_errors(base, references), "tuned": entity_errors(tuned, references)},
            "labels": {"tuned": label_confusion(["yes", "no"], ["yes", "yes"])},
        },
    }
    (run / "eval" / "results.json").write_text(json.dumps(results))
    return run


def test_report_shows_intervals_forgetting_and_error_analysis(tmp_path):
    html = write_report(_run(tmp_path)).read_text(encoding="utf-8")
    # Intervals and verdicts next to each change, and a chart of the changes.
    assert "[+0.250, +0.550]" in html and '<td class="better">better</td>' in html
    assert "[-1.200, -0.800]" in html and "95% paired bootstrap" in html
    assert "General ability: base 0.600 → tuned 0.550 (-0.050, interval [-0.120, +0.020]): no clear difference." in html
    assert "Items where tuned got worse" in html and "Bob &lt;works&gt;" in html and "1.00 → 0.00" in html
    # Entities by type: base missed ORG, LOC; tuned found ORG, missed PER and LOC, invented Paris.
    entity_table = html[html.index("<th>type</th>"):]
    assert re.search(r"<td>LOC</td>\s*" + r"\s*".join(f'<td class="num">{n}</td>' for n in (0, 1, 0, 0, 1, 1)), entity_table)
    assert "confusion matrices" in html
    # Metrics bars, change chart, forgetting chart, entity chart, one confusion matrix.
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 5
