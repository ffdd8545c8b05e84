"""Paired bootstrap intervals and verdicts on data whose answer is known."""
import numpy as np
import pytest

from domaintune.evaluation.bootstrap import (
    ItemStats,
    loss_item_stats,
    mean_item_stats,
    metric_item_stats,
    paired_difference,
    verdict,
)
from domaintune.evaluation.metrics import compute_metrics


def test_a_constant_difference_gives_a_tight_interval_and_a_clear_verdict():
    base = np.random.default_rng(0).random(120)
    result = paired_difference(mean_item_stats(base), mean_item_stats(base + 0.1))
    # Pairing cancels the spread between items: every resample sees the same +0.1.
    assert result["delta"] == pytest.approx(0.1)
    assert result["low"] == pytest.approx(0.1) and result["high"] == pytest.approx(0.1)
    assert result["verdict"] == "better"
    assert paired_difference(mean_item_stats(base + 0.1), mean_item_stats(base))["verdict"] == "worse"


def test_a_random_difference_straddles_zero():
    rng = np.random.default_rng(1)
    base, tuned = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    result = paired_difference(mean_item_stats(base), mean_item_stats(tuned))
    assert result["low"] < 0 < result["high"]
    assert result["verdict"] == "no clear difference"


def test_a_lower_loss_is_better():
    tokens = np.full(50, 10.0)
    base = loss_item_stats(np.array([np.full(50, 30.0), tokens]))
    tuned = loss_item_stats(np.array([np.full(50, 20.0), tokens]))
    result = paired_difference(base["loss"], tuned["loss"])
    assert result["base"] == pytest.approx(3.0) and result["tuned"] == pytest.approx(2.0)
    assert result["verdict"] == "better"
    assert paired_difference(base["perplexity"], tuned["perplexity"])["delta"] == pytest.approx(np.exp(2) - np.exp(3))


def test_item_statistics_reproduce_the_metrics_including_micro_entity_f1():
    references = ["[Acme - ORG, Berlin - LOC]", "[Alice - PER]", "No entities found", "[Bob - PER]"]
    predictions = ["[Acme - ORG]", "No entities found", "[X - ORG]", "[Bob - PER]"]
    names = ["entity_f1", "exact_match", "token_f1"]
    stats = metric_item_stats(names, predictions, references)
    expected = compute_metrics(names, predictions, references)
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert float(stats[key].value(stats[key].components.mean(axis=-1))) == pytest.approx(value), key


def test_same_model_twice_is_no_clear_difference_with_a_zero_interval():
    stats = ItemStats(np.array([[1.0, 0.0, 1.0, 1.0]]), lambda means: means[0])
    result = paired_difference(stats, stats)
    assert (result["delta"], result["low"], result["high"]) == (0.0, 0.0, 0.0)
    assert result["verdict"] == "no clear difference"


def test_verdict_words():
    assert verdict(0.01, 0.2, lower_is_better=False) == "better"
    assert verdict(0.01, 0.2, lower_is_better=True) == "worse"
    assert verdict(-0.3, -0.1, lower_is_better=True) == "better"
    assert verdict(-0.1, 0.1, lower_is_better=False) == "no clear difference"
