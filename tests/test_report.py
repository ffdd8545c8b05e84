"""The HTML report, rendered from small fake run directories."""
import json
import re

import pytest

from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.report import write_report


def _model(name, entity_f1, loss, perplexity):
    return {
        "model": name,
        "loss": {"validation": loss, "test": loss + 0.1},
        "perplexity": {"validation": perplexity, "test": None},
        "metrics": {"entity_precision": entity_f1 + 0.05, "entity_recall": entity_f1 - 0.05, "entity_f1": entity_f1},
        "seconds": 12.5,
    }


def _write_run(run_dir, with_base=True, with_logs=True, with_card=True):
    (run_dir / "eval").mkdir(parents=True)
    models = {"tuned": _model("out/tuned", 0.64, 1.2, 3.32)}
    if with_base:
        models["base"] = _model("smollm2-135m-instruct", 0.12, 2.5, 12.18)
    results = {"models": models, "n_test": 40, "n_generated": 20, "max_new_tokens": 64}
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    samples = [
        {"prompt": "Find entities: <script>alert(1)</script>", "reference": "[A - ORG]",
         "base": "No entities found" if with_base else None, "tuned": "[A - ORG]"},
        {"prompt": "Find entities: Bob & Alice", "reference": "[Bob - PER, Alice - PER]",
         "base": None, "tuned": "<b>[Bob - PER]</b>"},
    ]
    (run_dir / "eval" / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    (run_dir / "recipe.yaml").write_text("name: ner-demo\nmodel:\n  name: smollm2-135m-instruct\nmethod:\n  name: lora\n  r: 8\n")
    if with_logs:
        lines = [{"step": s, "epoch": s / 100, "loss": 3.0 - s / 100, "learning_rate": 1e-4} for s in range(10, 110, 10)]
        lines += [{"step": 50, "epoch": 0.5, "eval_loss": 2.6}, {"step": 100, "epoch": 1.0, "eval_loss": 2.4}]
        lines.append({"step": 100, "train_runtime": 42.0, "train_loss": 2.5})
        text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": 10'  # truncated last line
        (run_dir / "metrics.jsonl").write_text(text)
    if with_card:
        (run_dir / "data").mkdir()
        card = {
            "format": "chat",
            "rows": 1000,
            "dropped_duplicates": 7,
            "label_share": 0.25,
            "splits": {"train": 800, "validation": 100, "test": 100},
            "dropped": {"too_long": 3, "too_short": 2},
            "files": ["train.jsonl"],
        }
        (run_dir / "data" / "data_card.json").write_text(json.dumps(card))
    return run_dir


def test_full_report_shows_comparison_charts_samples_and_data(tmp_path):
    path = write_report(_write_run(tmp_path / "run"))
    assert path == tmp_path / "run" / "report.html"
    html = path.read_text(encoding="utf-8")

    assert "entity_f1: base 0.120 → tuned 0.640" in html
    for name in ("entity_precision", "entity_recall", "entity_f1", "loss (validation)", "perplexity (validation)"):
        assert name in html
    assert "+0.520" in html and "-1.300" in html and "-8.86" in html  # f1, validation loss, perplexity
    assert '<td class="num better">+0.520</td>' in html
    assert '<td class="num better">-1.300</td>' in html  # lower loss is better
    assert "ner-demo" in html and "lora" in html and "<details>" in html and "r: 8" in html
    # Loss curve, metrics bars and split sizes, all embedded.
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)) == 3
    assert "dropped_duplicates" in html and "too_long" in html and "800" in html
    assert "test rows: 40" in html and "max new tokens: 64" in html


def test_model_outputs_are_escaped(tmp_path):
    html = write_report(_write_run(tmp_path / "run")).read_text(encoding="utf-8")
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;[Bob - PER]&lt;/b&gt;" in html and "Bob &amp; Alice" in html


def test_report_without_optional_inputs(tmp_path):
    run_dir = _write_run(tmp_path / "run", with_base=False, with_logs=False, with_card=False)
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "entity_f1: tuned 0.640" in html
    assert '<th class="num">base</th>' not in html and "<th>base</th>" not in html
    assert '<th class="num">tuned</th>' in html and "change</th>" not in html
    assert len(re.findall(r"data:image/png;base64,", html)) == 1  # metrics only
    assert "<h2>Training" not in html and "<h2>Data" not in html


def test_missing_results_is_a_user_error(tmp_path):
    with pytest.raises(DomaintuneError, match="results.json"):
        write_report(tmp_path)


def test_a_lower_error_is_coloured_better():
    from domaintune.evaluation.report_tables import comparison_rows, harness_rows

    # A regression head: R² up and MSE down are both improvements, here without intervals.
    models = {"base": {"metrics": {"r2": 0.0, "mse": 4.0}, "loss": {}},
              "tuned": {"metrics": {"r2": 0.8, "mse": 0.8}, "loss": {}}}
    task_rows, _ = comparison_rows(models, {})
    assert [(row["label"], row["change"], row["trend"]) for row in task_rows] == [
        ("r2", "+0.800", "better"), ("mse", "-3.200", "better")]
    # lm-eval's perplexities and bits per byte fall as a model improves; its accuracies rise.
    models = {"base": {"harness": {"wikitext": {"word_perplexity,none": 40.0, "bits_per_byte,none": 1.2},
                                   "arc_easy": {"acc,none": 0.5}}},
              "tuned": {"harness": {"wikitext": {"word_perplexity,none": 30.0, "bits_per_byte,none": 1.0},
                                    "arc_easy": {"acc,none": 0.6}}}}
    assert [row["trend"] for row in harness_rows(models)] == ["better", "better", "better"]


def test_the_judge_section_counts_replies_without_a_verdict(tmp_path):
    run_dir = _write_run(tmp_path / "run")
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    results["judge"] = {"judge": "stub", "rubric": "r", "items": 5, "wins": {"tuned": 2, "base": 1, "tie": 2},
                        "tuned_win_rate": 0.6, "consistency": 0.6, "unparsed": 3}
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    assert "3 of 10 replies named no clear verdict (counted as ties)" in write_report(run_dir).read_text(encoding="utf-8")
