"""Contamination: evaluation rows whose words the training data already contains.

The leakage check catches an identical prompt; this catches the rest: a test row pasted into a
longer training row, reworded slightly, or a benchmark that a training file copied. An
evaluation row counts as contaminated when at least `threshold` of its word n-grams occur
anywhere in train. Rows shorter than n words count only when a train row has the same words.
"""
from __future__ import annotations

import re

from domaintune.config import ContaminationConfig
from domaintune.data.cleaning import row_text

_WORD = re.compile(r"\w+")


def _words(row: dict) -> list[str]:
    return _WORD.findall(row_text(row).lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class TrainIndex:
    """The training rows' word n-grams, and the short rows (fewer than n words) whole."""

    def __init__(self, train: list[dict], n: int):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.short: set[tuple[str, ...]] = set()
        for row in train:
            words = _words(row)
            self.grams |= _ngrams(words, n)
            if len(words) < n:
                self.short.add(tuple(words))

    def overlap(self, row: dict) -> float:
        """Share of the row's n-grams found in train; a row shorter than n words: 1 if a train row has
        the same words (inside a longer row they are too common to mean anything: "Section 2 .")."""
        words = _words(row)
        if len(words) < self.n:
            return float(tuple(words) in self.short)
        grams = _ngrams(words, self.n)
        return sum(gram in self.grams for gram in grams) / len(grams)


def check_contamination(train: list[dict], eval_sets: dict[str, list[dict]], config: ContaminationConfig) -> dict:
    """Per evaluation set: rows checked, rows contaminated, and a few examples with their overlap."""
    index = TrainIndex(train, config.ngram)
    report = {}
    for name, rows in eval_sets.items():
        hits = [(row, score) for row in rows if (score := index.overlap(row)) >= config.threshold]
        report[name] = {
            "rows": len(rows),
            "contaminated": len(hits),
            "examples": [
                {**_where(row), "overlap": round(score, 3), "text": row_text(row)[:160]} for row, score in hits[:5]
            ],
        }
    return report


def _where(row: dict) -> dict:
    source = row.get("source") or {}
    return {"file": source.get("file"), "line": source.get("line")}
