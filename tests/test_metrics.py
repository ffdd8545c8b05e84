"""Task metrics on small inputs whose scores were worked out by hand."""
import pytest

from domaintune.config.evaluation import METRIC_NAMES
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    entity_errors,
    entity_f1,
    exact_match,
    parse_entities,
    rouge_l,
    token_f1,
)


def test_exact_match_normalises_whitespace_and_case():
    predictions = ["  Paris \n France ", "Paris, France", "berlin"]
    references = ["paris france", "Paris France", "Berlin"]
    assert exact_match(predictions, references) == {"exact_match": pytest.approx(2 / 3)}


def test_accuracy_reads_the_first_line_without_punctuation_or_quotes():
    predictions = ["Positive.", '"negative"\nBecause the tone is harsh.', "Label: positive", "\n  NEUTRAL!"]
    references = ["positive", "negative", "positive", "neutral"]
    assert accuracy(predictions, references) == {"accuracy": 0.75}


def test_parse_entities_tolerates_messy_lists():
    text = "Entities: [Jean-Luc  -  per, Foo - Bar - ORG , , US - loc.\nmore text"
    assert parse_entities(text) == [("jean-luc", "PER"), ("foo - bar", "ORG"), ("us", "LOC")]
    assert parse_entities("[Acme - ORG, Berlin - LOC].") == [("acme", "ORG"), ("berlin", "LOC")]
    assert parse_entities("[A - ORG] and later [B - LOC]") == [("a", "ORG")]
    assert parse_entities("No entities found") == []
    assert parse_entities("[]") == []
    assert parse_entities("[Acme]") == [("acme", "")]


def test_entity_type_mismatch_is_one_miss_and_one_spurious():
    scores = entity_f1(["[A - ORG, B - LOCATION]"], ["[A - ORGANIZATION, B - LOCATION]"])
    assert scores == {"entity_precision": 0.5, "entity_recall": 0.5, "entity_f1": 0.5}


def test_entity_names_compare_case_insensitively():
    assert entity_f1(["[ACME corp - org]"], ["[Acme Corp - ORG]"])["entity_f1"] == 1.0


def test_entity_duplicates_count_as_multisets():
    # tp = 1, fp = 1 (the second Paris), fn = 0
    scores = entity_f1(["[Paris - LOC, Paris - LOC]"], ["[Paris - LOC]"])
    assert scores == {"entity_precision": 0.5, "entity_recall": 1.0, "entity_f1": pytest.approx(2 / 3)}


def test_no_entities_anywhere_and_none_predicted_is_perfect():
    scores = entity_f1(["No entities found", "Nothing here."], ["No entities found", "No entities found"])
    assert scores == {"entity_precision": 1.0, "entity_recall": 1.0, "entity_f1": 1.0}


def test_entity_scores_are_micro_averaged_over_items():
    predictions = ["[Acme Corp - ORG, Berlin - LOC, Bob - PER]", "No entities found", "No entities found"]
    references = ["[Acme Corp - ORG, Berlin - LOC]", "[Alice - PER]", "No entities found"]
    # tp = 2, fp = 1 (Bob), fn = 1 (Alice); the empty third item adds nothing.
    scores = entity_f1(predictions, references)
    assert scores["entity_precision"] == pytest.approx(2 / 3)
    assert scores["entity_recall"] == pytest.approx(2 / 3)
    assert scores["entity_f1"] == pytest.approx(2 / 3)


def test_entity_scores_with_one_empty_side_are_zero():
    assert entity_f1(["I think Acme is a company"], ["[Acme - ORG]"])["entity_f1"] == 0.0
    assert entity_f1(["[X - ORG]"], ["No entities found"]) == {
        "entity_precision": 0.0,
        "entity_recall": 0.0,
        "entity_f1": 0.0,
    }


def test_entity_errors_count_by_type():
    predictions = ["[A - ORG, B - LOCATION, C - PER]", "No entities found"]
    references = ["[A - ORGANIZATION, B - LOCATION]", "[D - ORGANIZATION]"]
    assert entity_errors(predictions, references) == {
        "correct": {"LOCATION": 1},
        "missed": {"ORGANIZATION": 2},
        "spurious": {"ORG": 1, "PER": 1},
    }


def test_token_f1_is_squad_style_and_averaged_per_item():
    # Articles and punctuation go: [cat, sat, on, mat] vs [cat, is, on, mat] share 3 tokens.
    predictions = ["The cat sat on the mat.", "", ""]
    references = ["the cat is on a mat", "something", "  "]
    scores = token_f1(predictions, references)
    assert scores["token_precision"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert scores["token_recall"] == pytest.approx((0.75 + 0 + 1) / 3)
    assert scores["token_f1"] == pytest.approx((0.75 + 0 + 1) / 3)


def test_token_f1_counts_repeated_tokens_once_per_occurrence():
    # overlap = 1 (one "red"), P = 1/3, R = 1/1
    scores = token_f1(["red red red"], ["red"])
    assert scores["token_precision"] == pytest.approx(1 / 3)
    assert scores["token_recall"] == 1.0
    assert scores["token_f1"] == pytest.approx(0.5)


def test_rouge_l_on_lin_2004_examples():
    # Lin (2004): LCS("police killed the gunman", "police kill the gunman") = 3 -> F = 0.75;
    # "the gunman kill police" only shares "the gunman" in order -> F = 0.5.
    reference = "police killed the gunman"
    assert rouge_l(["police kill the gunman"], [reference]) == {"rouge_l": 0.75}
    assert rouge_l(["the gunman kill police"], [reference]) == {"rouge_l": 0.5}


def test_rouge_l_with_unequal_lengths_and_case():
    # LCS = 3 (a c e): P = 3/3, R = 3/5, F = 2 * 1 * 0.6 / 1.6 = 0.75
    assert rouge_l(["A C E"], ["a b c d e"])["rouge_l"] == pytest.approx(0.75)
    assert rouge_l(["", "x"], ["", ""])["rouge_l"] == 0.5


def test_compute_metrics_merges_flat_results_in_unit_range():
    predictions = ["[A - ORG]", "positive", "the cat"]
    references = ["[A - ORG, B - LOC]", "Positive", "a cat sat"]
    results = compute_metrics(list(METRICS), predictions, references)
    assert set(results) == {
        "exact_match",
        "accuracy",
        "entity_precision",
        "entity_recall",
        "entity_f1",
        "token_precision",
        "token_recall",
        "token_f1",
        "rouge_l",
        "macro_f1",
        "choice_accuracy",
    }
    assert all(0.0 <= value <= 1.0 for value in results.values())
    assert results["exact_match"] == pytest.approx(1 / 3)


def test_compute_metrics_rejects_unknown_names_and_mismatched_lengths():
    with pytest.raises(DomaintuneError, match="bleu"):
        compute_metrics(["bleu"], ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics(["exact_match"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics(["rouge_l"], [], [])


def test_every_metric_a_recipe_may_name_is_implemented():
    assert set(METRIC_NAMES) == set(METRICS)
