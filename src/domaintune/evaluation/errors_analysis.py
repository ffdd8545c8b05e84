"""Error analysis: which test items tuning made worse, and the usual mistakes of extraction and
classification tasks (a confusion matrix of labels; missed vs spurious entities by type)."""
from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.metrics import confusion_matrix

from domaintune.core.answers import answer_label

OTHER = "(other)"  # predicted labels that are not reference labels, and rare labels past the cap
MAX_LABELS = 12  # a larger matrix stops being readable; the rest is folded into OTHER


def regressions(samples: list[dict], base_scores: np.ndarray, tuned_scores: np.ndarray, metric: str,
                limit: int) -> dict:
    """Items where the tuned model scored lower than the base model on `metric`, largest drop first."""
    drops = np.asarray(base_scores) - np.asarray(tuned_scores)
    worse = [int(i) for i in np.argsort(-drops, kind="stable") if drops[i] > 0]
    return {
        "metric": metric,
        "worse": len(worse),
        "better": int((drops < 0).sum()),
        "same": int((drops == 0).sum()),
        "items": [
            {**samples[i], "base_score": float(base_scores[i]), "tuned_score": float(tuned_scores[i])}
            for i in worse[:limit]
        ],
    }


def label_confusion(predictions: list[str], references: list[str]) -> dict:
    """Reference labels (rows) against predicted labels (columns), labels read like the `accuracy` metric."""
    truth = [answer_label(text) for text in references]
    common = [label for label, _ in Counter(truth).most_common(MAX_LABELS)]
    known = set(common)
    fold = [label if label in known else OTHER for label in truth]
    guessed = [label if (label := answer_label(text)) in known else OTHER for text in predictions]
    labels = common + ([OTHER] if OTHER in fold or OTHER in guessed else [])
    return {"labels": labels, "matrix": confusion_matrix(fold, guessed, labels=labels).tolist()}
