"""`domaintune init`: a recipe written from the data that checks and trains without edits."""
import csv
import json
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import domaintune
from domaintune.cli import app
from domaintune.config import DataConfig
from domaintune.data.formats import to_canonical
from domaintune.workflows.init_recipe import init_recipe

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


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_init_takes_the_format_most_rows_fit_not_the_first_rows(tmp_path, tiny_model_dir):
    rows = [{"text": "first review, label forgotten"}]
    rows += [{"text": f"review {i} was {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
             for i in range(20)]
    path = write_lines(tmp_path / "firstrow.jsonl", [json.dumps(row) for row in rows])
    recipe, notes = init_recipe([path], task="Classify the review.", model=str(tiny_model_dir))
    assert recipe["data"]["format"] == "labelled"
    assert "20 of 21 rows have the columns of the labelled format (text, label)" in notes[0]


def test_init_task_and_labels_with_braces_make_a_label_prompt_that_prepare_accepts(tmp_path, tiny_model_dir):
    lines = ["review,sentiment"] + [f"review {i} was {'great' if i % 2 else 'awful'},{'{pos}' if i % 2 else 'neg'}"
                                    for i in range(30)]
    path = write_lines(tmp_path / "reviews.csv", lines)
    task = 'Reply in JSON like {"sentiment": ...}'
    recipe, _ = init_recipe([path], task=task, model=str(tiny_model_dir))
    config = DataConfig(**{key: recipe["data"][key] for key in ("format", "columns", "label_prompt")})
    prompt = to_canonical({"review": "fine", "sentiment": "neg"}, "labelled", config)["messages"][0]["content"]
    assert prompt == 'Reply in JSON like {"sentiment": ...}. Answer with one of: neg, {pos}.\n\nfine'


def test_init_reads_a_label_column_beside_the_text_column(tmp_path, tiny_model_dir):
    lines = ["text,sentiment"] + [f"review number {i} says the product was {'great' if i % 2 else 'bad'} overall,"
                                  f"{'positive' if i % 2 else 'negative'}" for i in range(30)]
    path = write_lines(tmp_path / "text_sentiment.csv", lines)
    recipe, notes = init_recipe([path], task="Classify the sentiment", model=str(tiny_model_dir))
    assert recipe["data"]["format"] == "labelled" and recipe["data"]["columns"] == {"label": "sentiment"}
    assert recipe.get("objective") is None  # not pretrain: the labels are the answers
    assert "Answer with one of: negative, positive." in recipe["data"]["label_prompt"]
    assert any("'sentiment' holds 2 distinct short values: the label" in note for note in notes)


def test_init_leaves_a_short_column_of_unclear_purpose_undecided(tmp_path, tiny_model_dir):
    lines = ["text,lang"] + [f"document {i} is a long enough text about loans and rates,{'en' if i % 2 else 'de'}"
                             for i in range(30)]
    path = write_lines(tmp_path / "corpus.csv", lines)
    recipe, notes = init_recipe([path], task="Continue the loan documents", model=str(tiny_model_dir))
    assert recipe["data"]["format"] == "text" and recipe["objective"]["name"] == "pretrain"
    undecided = [note for note in notes if note.startswith("NOT DECIDED")]
    assert any("'lang'" in note and "data.columns: {label: lang}" in note for note in undecided)
    assert any("--task" in note for note in undecided)  # pretrain does not use the task: said, not ignored
