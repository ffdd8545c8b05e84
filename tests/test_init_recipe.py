"""`domaintune init`: a recipe written from the data that checks and trains without edits."""
import csv
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import domaintune
from domaintune.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
# Few steps and tiny evaluation so a test run takes seconds; the recipe itself is used as init wrote it.
QUICK = ["training.max_steps=2", "training.eval_every=1", "training.save_every=1", "training.threads=1",
         "training.precision=fp32", "evaluation.max_samples=6", "evaluation.max_new_tokens=4", "evaluation.shots=1",
         "evaluation.forgetting=false", "export.merged=false"]


@pytest.fixture
def awkward_csv(tmp_path) -> Path:
    """Drug reviews with spaces in the column names, 65% positive, 25% negative, 10% neutral."""
    path = tmp_path / "drug reviews.csv"
    labels = ["Positive"] * 13 + ["Negative"] * 5 + ["Neutral"] * 2
    rng = random.Random(0)
    vocabulary = [f"{stem}{suffix}" for stem in ("dose", "sleep", "pain", "rash", "mood", "nausea", "energy", "appetite",
                                                 "headache", "doctor", "week", "pill") for suffix in ("", "s", "y", "ed")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Patient Review", "Sentiment Label"])
        for label in labels * 4:  # varied words, so near-duplicate removal keeps the rows
            writer.writerow([" ".join(rng.sample(vocabulary, 12)) + f", and overall I feel {label.lower()}.", label])
    return path


def test_init_maps_awkward_columns_and_the_recipe_runs(awkward_csv, tmp_path, tiny_model_dir):
    out = tmp_path / "recipe.yaml"
    result = CliRunner().invoke(app, ["init", str(awkward_csv), "-o", str(out), "--model", str(tiny_model_dir),
                                      "--task", "Classify the sentiment of the drug review.", "--no-estimate"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    recipe = yaml.safe_load(text)
    assert recipe["data"]["format"] == "labelled"
    assert recipe["data"]["columns"] == {"text": "Patient Review", "label": "Sentiment Label"}
    assert "Answer with one of: Negative, Neutral, Positive." in recipe["data"]["label_prompt"]
    assert recipe["evaluation"]["metrics"] == "auto"
    assert "3 labels (Positive 65%, Negative 25%, Neutral 10%)" in text  # the reasons are comments
    assert "macro_f1, accuracy" in text  # 65% one label: macro-F1 carries the verdict
    assert recipe["data"]["balance_labels"] is True and recipe["evaluation"]["answers"] == "constrained"
    assert CliRunner().invoke(app, ["recipe", "check", str(out)]).exit_code == 0
    recipe["output_dir"] = str(tmp_path / "runs")
    out.write_text(yaml.safe_dump(recipe))
    run = domaintune.run(out, overrides=QUICK)
    results = run.results()
    assert results["metrics_chosen"]["metrics"] == ["macro_f1", "accuracy"]
    assert "majority answer" in results["baselines"]["models"]


@pytest.mark.parametrize("name, fmt, objective", [
    ("loan-mentions-300.jsonl", "labelled", None),
    ("loan-ner-300.jsonl", "chat", None),
    ("loan-prefs-pairwise.jsonl", "pairwise", "dpo"),
    ("loan-prefs-ranking.jsonl", "ranking", "dpo"),
    ("loan-prefs-rating.jsonl", "rating", "kto"),
    ("loan-text-300.jsonl", "text", "pretrain"),
])
def test_init_on_every_example_file_writes_a_recipe_that_trains(name, fmt, objective, tmp_path, tiny_model_dir):
    out = tmp_path / "recipe.yaml"
    written = domaintune.init([EXAMPLES / name], out=out, model=str(tiny_model_dir))
    recipe = written["recipe"]
    assert recipe["data"].get("format") == fmt
    assert (recipe.get("objective") or {}).get("name") == objective
    checked = domaintune.check_recipe(out, [f"output_dir={tmp_path / 'runs'}"])
    run = domaintune.train(checked, overrides=QUICK)
    assert run.training_summary()["global_step"] >= 1


def test_init_refuses_a_file_without_rows(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    result = CliRunner().invoke(app, ["init", str(empty), "-o", str(tmp_path / "r.yaml"), "--no-estimate"])
    assert result.exit_code == 2 and "no row could be read" in result.output
