"""Fair baselines and metrics chosen from the data: tuned is compared with the strongest cheap alternative."""
import json

import numpy as np
import pytest

import domaintune
from domaintune.evaluation import baselines, bootstrap
from domaintune.evaluation.baselines import lenient_label, majority_answer, strongest_baseline
from domaintune.evaluation.metric_choice import answer_stops, choose_metrics, closed_label_set
from domaintune.evaluation.metrics import choice_accuracy, macro_f1


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_metrics_are_chosen_from_the_shape_of_the_answers():
    labelled = [chat(f"review {i}", label) for i, label in enumerate(["positive", "negative", "neutral"] * 4)]
    assert choose_metrics("auto", labelled, labelled)[0] == ["accuracy", "macro_f1"]
    letters = [chat(f"q {i}", letter) for i, letter in enumerate("ABCD" * 3)]
    metrics, why = choose_metrics("auto", letters, letters)
    assert metrics == ["choice_accuracy"] and "option letters" in why
    entities = [chat(f"s {i}", "[ACME - ORGANIZATION, Paris - LOCATION]" if i % 2 else "No entities found")
                for i in range(30)]
    assert choose_metrics("auto", entities, entities)[0] == ["entity_f1", "exact_match"]
    short = [chat(f"q {i}", f"the office in city number {i}") for i in range(30)]
    assert choose_metrics("auto", short, short)[0] == ["exact_match", "token_f1"]
    long = [chat(f"q {i}", " ".join(["word"] * 40) + str(i)) for i in range(30)]
    assert choose_metrics("auto", long, long)[0] == ["rouge_l", "token_f1"]
    assert choose_metrics(["rouge_l"], labelled, labelled) == (["rouge_l"], "as listed in the recipe (evaluation.metrics)")
    assert choose_metrics("auto", [{"text": "raw"}], [{"text": "raw"}])[0] == []


def test_a_label_set_is_closed_only_when_every_test_answer_is_in_it():
    train = [chat("a", "Yes"), chat("b", "No"), chat("c", "Yes")]
    assert closed_label_set(train, [chat("d", "yes.")]) == ["No", "Yes"]
    assert closed_label_set(train, [chat("d", "maybe")]) is None
    assert closed_label_set([chat(str(i), f"answer {i}") for i in range(30)], [chat("x", "answer 1")]) is None


def test_one_line_answers_stop_generation_at_a_line_break():
    one_line = [chat("a", "Yes"), chat("b", "ACME - ORGANIZATION\n")]  # a trailing break is still one line
    assert answer_stops(None, one_line) == ["\n"]
    assert answer_stops(None, one_line + [chat("c", "step 1\nstep 2")]) == []
    assert answer_stops(None, [{"text": "raw"}]) == []
    assert answer_stops([], one_line) == [] and answer_stops(["###"], one_line) == ["###"]  # the recipe's own


def test_lenient_reading_takes_the_one_label_an_answer_names():
    labels = ["negative", "neutral", "positive"]
    assert lenient_label("The sentiment of this review is positive. The review ...", labels) == "positive"
    assert lenient_label("Not positive but negative", labels) == "Not positive but negative"  # two labels: strict
    assert lenient_label("positively", labels) == "positively"  # whole words only


def test_macro_f1_and_choice_accuracy_on_known_input():
    # Always "a" on 3 a's and 1 b: accuracy 0.75, but F1(a) = 6/7 and F1(b) = 0.
    assert macro_f1(["a", "a", "a", "a"], ["a", "a", "a", "b"])["macro_f1"] == pytest.approx(3 / 7)
    stats = bootstrap.metric_item_stats(["macro_f1"], ["a", "a", "a", "a"], ["a", "a", "a", "b"])
    macro = stats["macro_f1"]
    assert float(macro.value(macro.components.mean(axis=1))) == pytest.approx(3 / 7)
    assert choice_accuracy(["The answer is B.", "(C)", "A) because", "none"], ["B", "C", "D", "A"])["choice_accuracy"] \
        == pytest.approx(0.5)


def test_the_verdict_is_against_the_strongest_baseline():
    tuned = bootstrap.mean_item_stats([1, 1, 1, 0, 1, 1, 1, 1, 0, 1])
    stats = {
        "tuned": {"accuracy": tuned},
        "majority answer": {"accuracy": bootstrap.mean_item_stats([1, 1, 1, 0, 1, 1, 0, 1, 0, 1])},
        "base": {"accuracy": bootstrap.mean_item_stats(np.zeros(10)),
                 "accuracy (lenient)": bootstrap.mean_item_stats([1, 0, 1, 0, 1, 0, 0, 1, 0, 0])},
    }
    result = strongest_baseline("accuracy", stats, 0.95, 500, 0)
    assert {(c["baseline"], c["reading"]) for c in result["candidates"]} == {
        ("majority answer", "strict"), ("base", "strict"), ("base", "lenient")}
    assert result["strongest"]["baseline"] == "majority answer"
    assert result["strongest"]["delta"] == pytest.approx(0.1) and result["strongest"]["verdict"] == "no clear difference"


def test_majority_answer_is_the_most_frequent_train_answer():
    assert majority_answer([chat("a", "No"), chat("b", "Yes"), chat("c", "No"), {"text": "raw"}]) == "No"
    assert majority_answer([{"text": "raw"}]) is None


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory, tiny_model_dir):
    """Labelled reviews, 65% positive, 25% negative, 10% neutral, trained a few steps on the tiny model."""
    tmp = tmp_path_factory.mktemp("sentiment")
    labels = ["positive"] * 13 + ["negative"] * 5 + ["neutral"] * 2
    rows = [{"review": f"Review {i}: the drug was {label} for me", "sentiment": label}
            for i, label in enumerate(labels * 5)]
    data = tmp / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = {
        "name": "sentiment",
        "output_dir": str(tmp / "runs"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"train": [str(data)], "format": "labelled", "columns": {"text": "review", "label": "sentiment"},
                 "label_prompt": "Sentiment of this review (positive, negative or neutral)?\n{text}", "max_tokens": 64,
                 "split": {"validation": 0.1, "test": 0.3}, "balance_labels": True},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 2e-2, "eval_every": 2, "save_every": 2,
                     "threads": 1, "precision": "fp32", "early_stopping": None},
        "evaluation": {"max_samples": 30, "max_new_tokens": 6, "batch_size": 8, "shots": 2, "forgetting": False,
                       "answers": "constrained"},
        "export": {"dtype": "float32"},
    }
    run = domaintune.train(recipe)
    return run, domaintune.evaluate(run.root)


def test_a_labelled_task_is_compared_with_every_baseline(sentiment_run):
    run, results = sentiment_run
    # 65% positive: the verdict is on macro-F1, which always answering "positive" cannot win.
    assert results["metrics_chosen"]["metrics"] == ["macro_f1", "accuracy"]
    assert results["labels"] == ["negative", "neutral", "positive"]
    # balanced training: the rarer labels' rows were repeated
    assert run.training_summary()["train_rows"] > len(run.read_split("train"))
    baselines = results["baselines"]
    assert set(baselines["models"]) == {"majority answer", "base k-shot"}
    assert results["stop"] == ["\n"]  # labels are one line: answers end at a line break
    assert baselines["models"]["majority answer"]["model"].endswith("'positive'")
    # The majority answer scores the positive share of the generated test rows.
    test_labels = [row["messages"][-1]["content"] for row in run.read_split("test")][: results["n_generated"]]
    assert baselines["models"]["majority answer"]["metrics"]["accuracy"] == pytest.approx(
        test_labels.count("positive") / len(test_labels))
    for model in ("base", "tuned"):
        assert {"accuracy", "accuracy (lenient)", "accuracy (constrained)", "macro_f1 (constrained)"} <= set(
            results["models"][model]["metrics"])
    readings = {(c["baseline"], c["reading"]) for c in baselines["candidates"]}
    assert {("majority answer", "strict"), ("base", "strict"), ("base", "lenient"), ("base", "constrained"),
            ("base k-shot", "strict"), ("base k-shot", "lenient")} <= readings
    strongest = baselines["strongest"]
    assert baselines["tuned_reading"] == "constrained" and baselines["metric"] == "macro_f1"
    assert strongest["tuned"] == pytest.approx(results["models"]["tuned"]["metrics"]["macro_f1 (constrained)"])
    assert strongest["value"] == max(c["value"] for c in baselines["candidates"])
    assert strongest["low"] <= strongest["delta"] <= strongest["high"]

    html = (run.root / "report.html").read_text()
    assert "Against the cheapest alternatives" in html and "(strongest)" in html
    assert "tuned (constrained)" in html and "vs the strongest baseline" in html  # the headline
    assert "precision, recall and F1 per class" in html
    assert "answers end at" in html
    assert "the answers form a closed set of 3 labels" in html


def test_the_advice_counts_test_rows_a_near_copy_in_training_answers_otherwise():
    copies = ["No", None, "No", "$5.00", None, None, None, None, None, None]
    tuned = ["No", "Yes", "Yes ", "$5.00", "No", "No", "No", "No", "No", "No"]
    text = baselines.near_copy_advice(tuned, copies)
    assert text.startswith("3 of the 10 test rows scored have a training row with nearly the same words and another "
                           "answer, and tuned gave 2 of them that training row's answer")
    assert baselines.near_copy_advice(tuned, [None] * 8 + ["No", "No"]) is None  # too few to explain a verdict
