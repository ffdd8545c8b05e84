"""Paired bootstrap confidence intervals for base-vs-tuned differences, with a verdict in plain words.

Both models answer the same items, so the items are resampled together (paired) and the metric is
recomputed on every resample from per-item sufficient statistics: a score per item for averaged
metrics, (correct, spurious, missed) counts for micro entity F1, (loss sum, tokens) for the
token-weighted loss. Recomputing (not averaging per-item F1) keeps micro-averaged metrics exact.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

from domaintune.evaluation.metrics import METRICS, class_counts, entity_item_counts, entity_scores, macro_f1_from_counts
from domaintune.models.inference import perplexity

BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"


@dataclass(frozen=True)
class ItemStats:
    """One metric over n items: per-item statistics and how their means become the metric."""

    components: np.ndarray  # shape (k, n)
    value: Callable[[np.ndarray], np.ndarray]  # means of shape (k, ...) -> metric, vectorised over "..."
    lower_is_better: bool = False


def _first(means: np.ndarray) -> np.ndarray:
    return means[0]


def mean_item_stats(scores) -> ItemStats:
    """A metric that is the mean of one score per item (accuracy, per-item F1, ...)."""
    return ItemStats(np.asarray(scores, dtype=float)[None], _first)


def item_scores(stats: ItemStats) -> np.ndarray:
    """Each item's own value of the metric (an item's F1 from its own counts, for micro F1)."""
    return stats.value(stats.components)


def metric_item_stats(names: list[str], predictions: list[str], references: list[str]) -> dict[str, ItemStats]:
    """Per-item statistics for every value `compute_metrics(names, ...)` reports."""
    stats: dict[str, ItemStats] = {}
    for name in names:
        if name == "entity_f1":
            counts = np.asarray(entity_item_counts(predictions, references), dtype=float).T
            for key in entity_scores(0, 0, 0):
                stats[key] = ItemStats(counts, lambda means, key=key: entity_scores(*means)[key])
            continue
        if name == "macro_f1":  # recomputed from per-class counts on every resample, like micro entity F1
            stats[name] = ItemStats(class_counts(predictions, references)[1], macro_f1_from_counts)
            continue
        # The other metrics are means over items, so each item's own score is its statistic.
        per_item = [METRICS[name]([p], [r]) for p, r in zip(predictions, references)]
        for key in per_item[0]:
            stats[key] = mean_item_stats([item[key] for item in per_item])
    return stats


def loss_item_stats(row_losses: np.ndarray) -> dict[str, ItemStats]:
    """Token-weighted loss and perplexity from per-row (loss sum, supervised tokens), shape (2, n)."""

    def loss(means: np.ndarray) -> np.ndarray:
        return means[0] / means[1]

    return {
        "loss": ItemStats(row_losses, loss, lower_is_better=True),
        "perplexity": ItemStats(row_losses, lambda means: perplexity(loss(means)), lower_is_better=True),
    }


def verdict(low: float, high: float, lower_is_better: bool) -> str:
    """Plain words: the whole interval on one side of zero is a clear change, else no clear difference."""
    if low > 0 or high < 0:
        return BETTER if (low > 0) != lower_is_better else WORSE
    return UNCLEAR


def paired_difference(base: ItemStats, tuned: ItemStats, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> dict:
    """Tuned minus base with a percentile bootstrap interval over items resampled in pairs."""

    def difference(base_components, tuned_components, axis=-1):
        return tuned.value(tuned_components.mean(axis=axis)) - base.value(base_components.mean(axis=axis))

    with warnings.catch_warnings():
        # Identical resamples (a constant difference) are a valid, degenerate answer: a zero-width interval.
        warnings.simplefilter("ignore")
        interval = bootstrap(
            (base.components, tuned.components), difference, paired=True, vectorized=True, axis=-1,
            n_resamples=resamples, confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
        ).confidence_interval
    low, high = float(interval.low), float(interval.high)
    return {
        "base": float(base.value(base.components.mean(axis=-1))),
        "tuned": float(tuned.value(tuned.components.mean(axis=-1))),
        "delta": float(difference(base.components, tuned.components)),
        "low": low,
        "high": high,
        "verdict": verdict(low, high, tuned.lower_is_better),
    }


def compare(base: dict[str, ItemStats], tuned: dict[str, ItemStats], confidence: float, resamples: int,
            seed: int = 0) -> dict[str, dict]:
    """`paired_difference` for every statistic both models have."""
    return {
        key: paired_difference(base[key], tuned[key], confidence, resamples, seed)
        for key in base
        if key in tuned
    }


def paired_comparison(recipe, base: dict[str, ItemStats], tuned: dict[str, ItemStats]) -> dict:
    """results.json's `confidence` and `comparison`: the paired bootstrap of every per-item statistic,
    at the recipe's confidence, resamples and seed."""
    config = recipe.evaluation
    return {
        "confidence": {"confidence": config.confidence, "resamples": config.bootstrap_resamples, "seed": recipe.seed,
                       "method": "paired bootstrap over test items (percentile)"},
        "comparison": compare(base, tuned, config.confidence, config.bootstrap_resamples, recipe.seed),
    }
