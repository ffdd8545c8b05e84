"""Task metrics that compare generated answers with reference answers.

Every metric takes `(predictions, references)`, two equally long lists of strings,
and returns a flat dict of floats in [0, 1]. `METRICS` maps the names a recipe may
list under `evaluation.metrics` to those functions; `compute_metrics` runs several
and merges their results.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable

import numpy as np

from domaintune.core.answers import answer_label
from domaintune.core.entities import list_items, split_item
from domaintune.core.errors import DomaintuneError

MetricFn = Callable[[list[str], list[str]], dict[str, float]]

_WHITESPACE = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _pairs(predictions: list[str], references: list[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    return list(zip(predictions, references))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


# --- exact match and label accuracy ---------------------------------------------------


def exact_match(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Share of answers equal to the reference after stripping, collapsing whitespace and case-folding."""
    hits = [_collapse(p).casefold() == _collapse(r).casefold() for p, r in _pairs(predictions, references)]
    return {"exact_match": _mean(hits)}


def accuracy(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Share of predictions whose first line, without surrounding punctuation/quotes, is the reference label."""
    hits = [answer_label(p) == answer_label(r) for p, r in _pairs(predictions, references)]
    return {"accuracy": _mean(hits)}


def class_counts(predictions: list[str], references: list[str]) -> tuple[list[str], np.ndarray]:
    """The reference classes and, per item and class, (true positive, false positive, false negative)
    indicators, shape (3 * classes, items): the sufficient statistics of macro-F1."""
    pairs = [(answer_label(p), answer_label(r)) for p, r in _pairs(predictions, references)]
    classes = sorted({truth for _, truth in pairs})
    counts = np.zeros((3 * len(classes), len(pairs)))
    for item, (guess, truth) in enumerate(pairs):
        for index, label in enumerate(classes):
            counts[3 * index, item] = guess == label and truth == label
            counts[3 * index + 1, item] = guess == label and truth != label
            counts[3 * index + 2, item] = guess != label and truth == label
    return classes, counts


def macro_f1_from_counts(means: np.ndarray) -> np.ndarray:
    """Mean over classes of each class's F1, from the (tp, fp, fn) means; vectorised over trailing axes."""
    tp, fp, fn = means[0::3], means[1::3], means[2::3]
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0)
    return f1.mean(axis=0)


def macro_f1(predictions: list[str], references: list[str]) -> dict[str, float]:
    """F1 per reference class (labels read like `accuracy`), averaged with equal weight: a model that always
    answers the majority class scores well on accuracy and poorly here."""
    classes, counts = class_counts(predictions, references)
    return {"macro_f1": float(macro_f1_from_counts(counts.mean(axis=1))) if classes else 0.0}


_CHOICE = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")


def choice_letter(text: str) -> str:
    """The option letter an answer picks: the first standalone A-J ("B", "(B)", "B) ...", "The answer is B.")."""
    match = _CHOICE.search(text.strip())
    return match.group(1) if match else ""


def choice_accuracy(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Multiple choice: share of answers whose option letter is the reference's."""
    hits = [choice_letter(p) == choice_letter(r) != "" for p, r in _pairs(predictions, references)]
    return {"choice_accuracy": _mean(hits)}


# --- entity extraction ------------------------------------------------------------------


def parse_entities(text: str) -> list[tuple[str, str]]:
    """Parse the first `[NAME - TYPE, ...]` list in `text` into (name, TYPE) pairs.

    Names are whitespace-collapsed and case-folded (so they compare case-insensitively),
    types upper-cased. Text without a list, such as "No entities found", has no entities.
    An item without a " - " separator is kept with an empty type, so a malformed prediction
    counts as wrong instead of silently disappearing.
    """
    entities = []
    for item in list_items(text):
        item = _collapse(item).rstrip(". ")
        if item:
            name, kind = split_item(item) or (item, "")
            entities.append((name.casefold(), kind.upper()))
    return entities


def _entity_counts(prediction: str, reference: str) -> tuple[Counter, Counter, Counter]:
    """(correct, spurious, missed) entities of one item, as multisets."""
    predicted, expected = Counter(parse_entities(prediction)), Counter(parse_entities(reference))
    correct = predicted & expected
    return correct, predicted - correct, expected - correct


def entity_item_counts(predictions: list[str], references: list[str]) -> list[tuple[int, int, int]]:
    """(correct, spurious, missed) entity counts per item: the bootstrap resamples these."""
    counts = []
    for prediction, reference in _pairs(predictions, references):
        correct, spurious, missed = _entity_counts(prediction, reference)
        counts.append((sum(correct.values()), sum(spurious.values()), sum(missed.values())))
    return counts


def entity_scores(tp, fp, fn) -> dict[str, np.ndarray]:
    """Micro precision, recall and F1 from entity counts (or their means); numbers or numpy arrays,
    so the bootstrap scores all its resamples at once."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    nothing = tp + fp + fn == 0  # no entities anywhere and none predicted: the model did everything right
    return {
        "entity_precision": np.where(nothing, 1.0, precision),
        "entity_recall": np.where(nothing, 1.0, recall),
        "entity_f1": np.where(nothing, 1.0, f1),
    }


def entity_f1(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over all items.

    Entities are multisets of (case-folded name, TYPE), so a duplicate counts once per
    occurrence on each side. An item where neither side has entities is correct and adds
    nothing to the counts. With no entities anywhere and none predicted the model did
    everything right and every score is 1.0; a ratio whose denominator is otherwise zero
    (no predictions, or no reference entities) is 0.0.
    """
    tp, fp, fn = np.sum(entity_item_counts(predictions, references), axis=0)
    return {key: float(value) for key, value in entity_scores(tp, fp, fn).items()}


def entity_errors(predictions: list[str], references: list[str]) -> dict[str, dict[str, int]]:
    """Count entities by TYPE for error analysis: `{"correct": ..., "missed": ..., "spurious": ...}`.

    "missed" are reference entities the model did not produce, "spurious" predicted
    entities absent from the reference; a right name with the wrong type is one of each.
    """
    totals = {"correct": Counter(), "missed": Counter(), "spurious": Counter()}
    for prediction, reference in _pairs(predictions, references):
        correct, spurious, missed = _entity_counts(prediction, reference)
        for key, found in (("correct", correct), ("missed", missed), ("spurious", spurious)):
            for (_, kind), count in found.items():
                totals[key][kind] += count
    return {key: dict(sorted(counts.items())) for key, counts in totals.items()}


# --- free-text overlap -------------------------------------------------------------------


def _squad_tokens(text: str) -> list[str]:
    # SQuAD's answer normalisation: lower-case, drop punctuation and English articles.
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return _ARTICLES.sub(" ", text).split()


def token_f1(predictions: list[str], references: list[str]) -> dict[str, float]:
    """SQuAD-style bag-of-tokens precision, recall and F1, computed per item and averaged.

    An item where both sides normalise to no tokens scores 1.0; where only one does, 0.0.
    """
    scores = []
    for prediction, reference in _pairs(predictions, references):
        predicted, expected = _squad_tokens(prediction), _squad_tokens(reference)
        if not predicted or not expected:
            same = float(predicted == expected)
            scores.append((same, same, same))
            continue
        overlap = sum((Counter(predicted) & Counter(expected)).values())
        precision, recall = overlap / len(predicted), overlap / len(expected)
        scores.append((precision, recall, _f1(precision, recall)))
    precisions, recalls, f1s = zip(*scores)
    return {"token_precision": _mean(precisions), "token_recall": _mean(recalls), "token_f1": _mean(f1s)}


def _lcs_length(a: list[str], b: list[str]) -> int:
    # Classic dynamic programme, keeping only the previous row: O(len(a) * len(b)) time.
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-L F-measure (beta = 1) over lower-cased whitespace tokens, averaged per item.

    An item where both sides are empty scores 1.0; where only one is, 0.0.
    """
    scores = []
    for prediction, reference in _pairs(predictions, references):
        predicted, expected = prediction.lower().split(), reference.lower().split()
        if not predicted or not expected:
            scores.append(float(predicted == expected))
            continue
        lcs = _lcs_length(predicted, expected)
        scores.append(_f1(lcs / len(predicted), lcs / len(expected)))
    return {"rouge_l": _mean(scores)}


METRICS: dict[str, MetricFn] = {
    "exact_match": exact_match,
    "accuracy": accuracy,
    "entity_f1": entity_f1,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
    "macro_f1": macro_f1,
    "choice_accuracy": choice_accuracy,
}


def compute_metrics(names: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    """Run the named metrics and merge their results into one flat dict."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise DomaintuneError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    results: dict[str, float] = {}
    for name in names:
        results.update(METRICS[name](predictions, references))
    return results
