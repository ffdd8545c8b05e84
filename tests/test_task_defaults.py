"""Defaults that fit the data: skewed label sets are balanced and scored by macro-F1, closed answer sets
are constrained to the allowed answers, and a verdict that is not a win comes with advice."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from domaintune.core.chat import final_answer
from domaintune.data.balance import balanced_rows
from domaintune.evaluation import bootstrap
from domaintune.evaluation.baselines import collapse_advice, collapsed_answer, strongest_baseline
from domaintune.evaluation.metric_choice import choose_metrics
from domaintune.workflows.init_recipe import init_recipe, split_shares

BENCH = Path(__file__).resolve().parents[1] / "bench"


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_rare_answers_are_repeated_up_to_the_geometric_mean():
    rows = [chat(f"event {i}", "Information") for i in range(600)] + [chat(f"fault {i}", "Error") for i in range(20)]
    balanced, counts = balanced_rows(rows, seed=0)
    assert counts == {"information": (600, 600), "error": (20, 110)}  # sqrt(600 * 20) = 109.5
    answers = Counter(final_answer(row) for row in balanced)
    assert answers == {"Information": 600, "Error": 110}
    # every rare row is used, none invented: each appears 5 or 6 times
    assert set(Counter(row["messages"][0]["content"] for row in balanced if final_answer(row) == "Error").values()) \
        == {5, 6}


def test_free_text_and_raw_text_are_left_alone():
    free = [chat(f"q {i}", f"answer number {i}") for i in range(40)]
    assert balanced_rows(free) == (free, {})
    raw = [{"text": "a document"}] * 3
    assert balanced_rows(raw) == (raw, {})


def test_a_skewed_label_set_is_judged_by_macro_f1_first():
    skewed = [chat(f"pair {i}", "No" if i % 10 else "Yes") for i in range(50)]
    metrics, why = choose_metrics("auto", skewed, skewed)
    assert metrics == ["macro_f1", "accuracy"] and "90% of them one label" in why
    even = [chat(f"pair {i}", "No" if i % 2 else "Yes") for i in range(50)]
    assert choose_metrics("auto", even, even)[0] == ["accuracy", "macro_f1"]


def test_the_tuned_models_constrained_answers_can_carry_the_verdict():
    stats = {
        "tuned": {"accuracy": bootstrap.mean_item_stats(np.zeros(20)),
                  "accuracy (constrained)": bootstrap.mean_item_stats(np.ones(20))},
        "majority answer": {"accuracy": bootstrap.mean_item_stats([1, 0] * 10)},
    }
    free = strongest_baseline("accuracy", stats, 0.95, 500, 0, labels=["No", "Yes"])
    assert free["tuned_reading"] == "strict" and free["strongest"]["verdict"] == "worse" and "advice" in free
    constrained = strongest_baseline("accuracy", stats, 0.95, 500, 0, "constrained", ["No", "Yes"])
    assert constrained["tuned_reading"] == "constrained"
    assert constrained["strongest"]["tuned"] == 1.0 and constrained["strongest"]["verdict"] == "better"
    assert "advice" not in constrained


def test_a_chance_level_result_says_what_would_help():
    guess = [1, 0, 0, 0] * 10  # 0.25 on four options
    stats = {"tuned": {"choice_accuracy": bootstrap.mean_item_stats(guess)},
             "majority answer": {"choice_accuracy": bootstrap.mean_item_stats([0, 1, 0, 0] * 10)}}
    result = strongest_baseline("choice_accuracy", stats, 0.95, 500, 0, labels=list("ABCD"))
    assert "about chance (0.25 for 4 answers)" in result["advice"]
    assert "larger base model" in result["advice"] and "continued pretraining" in result["advice"]


def test_init_balances_a_skewed_set_and_constrains_closed_answers(tmp_path, tiny_model_dir):
    skewed = tmp_path / "matching.jsonl"
    skewed.write_text("".join(
        f'{{"prompt": "Are product {i} and product {i + 1} the same?", "completion": "{"Yes" if i % 8 == 0 else "No"}"}}\n'
        for i in range(80)))
    recipe, notes = init_recipe([str(skewed)], model=str(tiny_model_dir))
    assert recipe["data"]["balance_labels"] is True and recipe["evaluation"]["answers"] == "constrained"
    assert any("data.balance_labels" in note for note in notes)
    # 80 rows, 10 of them "Yes": the test share stops at its 30% cap, and the note says what "Yes" gets.
    assert recipe["data"]["split"]["test"] == 0.3 and any("the rarest answer (10 rows)" in note for note in notes)
    even = tmp_path / "exam.jsonl"
    even.write_text("".join(f'{{"prompt": "Question {i}: A, B, C or D?", "completion": "{"ABCD"[i % 4]}"}}\n'
                            for i in range(80)))
    recipe, _ = init_recipe([str(even)], model=str(tiny_model_dir))
    assert "balance_labels" not in recipe["data"] and recipe["evaluation"]["answers"] == "constrained"
    free = tmp_path / "free.jsonl"
    free.write_text("".join(f'{{"prompt": "Where is office {i}?", "completion": "In building {i}, floor {i % 7}"}}\n'
                            for i in range(80)))
    recipe, _ = init_recipe([str(free)], model=str(tiny_model_dir))
    assert "balance_labels" not in recipe["data"] and "answers" not in recipe["evaluation"]


@pytest.fixture
def suite_tasks():
    sys.path.insert(0, str(BENCH))
    try:
        from tasks import TASKS
        yield TASKS
    finally:
        sys.path.remove(str(BENCH))


def test_the_task_suite_has_six_shapes_in_five_file_kinds(suite_tasks):
    assert len(suite_tasks) == 6 and len({task.name for task in suite_tasks}) == 6
    assert {Path(task.filename).suffix for task in suite_tasks} == {".csv", ".json", ".jsonl", ".parquet"}
    assert all(task.member.startswith("evals/registry/data/") and "ner_finance" not in task.member
               for task in suite_tasks)


def test_a_model_that_gives_one_answer_to_everything_is_called_out():
    assert collapsed_answer(["unknown"] * 6) == "unknown"
    assert collapsed_answer(["unknown"] * 5 + ["$12.00"]) is None
    assert collapsed_answer(["No"] * 3) is None  # too few rows to say
    assert "the same answer, 'unknown', to every test row" in collapse_advice("unknown")
    assert "data.balance_labels repeats" in collapse_advice("No")
    assert "already repeated" in collapse_advice("No", balanced=True)


def test_long_rows_are_split_over_gradient_accumulation(tmp_path, tiny_model_dir):
    long = tmp_path / "long.jsonl"
    filler = " ".join(f"word{i}" for i in range(300))  # ~600 tokens a row
    long.write_text("".join(f'{{"prompt": "{filler} question {i}", "completion": "answer {i % 3}"}}\n'
                            for i in range(60)))
    recipe, notes = init_recipe([str(long)], model=str(tiny_model_dir))
    training = recipe["training"]
    assert training["batch_size"] * training["grad_accum"] == 8 and training["batch_size"] <= 4
    assert any("accumulated" in note for note in notes)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(f'{{"prompt": "question {i}", "completion": "answer {i % 3}"}}\n' for i in range(60)))
    training = init_recipe([str(short)], model=str(tiny_model_dir))[0]["training"]
    assert training["batch_size"] == 8 and "grad_accum" not in training


def test_the_rarest_answer_gets_enough_test_rows():
    assert split_shares(1000) == ({"validation": 0.05, "test": 0.1}, split_shares(1000)[1])
    # 25 rows of the rarest answer: 5 test rows of it need a 20% test share.
    shares, why = split_shares(1000, rarest_answer=25)
    assert shares["test"] == 0.2 and "gets about 5 test rows" in why
    assert split_shares(1000, rarest_answer=5)[0]["test"] == 0.3  # never more than 30%


def test_the_suite_budget_counts_every_accumulated_row(suite_tasks):
    from task_suite import capped_steps

    recipe = {"training": {"batch_size": 4, "grad_accum": 2, "epochs": 5}, "data": {"split": {"validation": 0.1,
                                                                                              "test": 0.2}}}
    # 48,000 tokens of 300-token rows is 160 rows: 20 optimizer steps of 4 rows x 2 accumulated.
    assert capped_steps(recipe, rows=1000, tokens_per_row=300, train_tokens=48_000) == 20
    # Never more than the recipe's epochs: 70 training rows x 5 epochs is 45 steps of 8 (9 an epoch).
    assert capped_steps(recipe, rows=100, tokens_per_row=10, train_tokens=48_000) == 45
