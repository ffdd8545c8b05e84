"""Contamination: evaluation rows whose words the training data already contains.

The leakage check catches an identical prompt; this catches the rest: a test row pasted into a
longer training row, reworded slightly, or a benchmark that a training file copied. An
evaluation row counts as contaminated when at least `threshold` of its word n-grams occur
anywhere in train. Rows shorter than n words count only when a train row has the same words.

The n-grams most rows share are the data's template (`template_grams`: an instruction, a label
prompt), left out of both sides. Counted, every row of a templated file overlapped train (41 of 42
test rows of the task suite's product-matching, 54 of 67 of event-severity's), so the warning said
nothing about any one row. System prompts are left out too: where rows share a document there (a
database schema), it is context, not a copy.

A contaminated row whose nearest training row has another answer is a near-copy that disagrees (an
email with the payee's name taken out, a product title paired with another): a model learns such rows'
look before the detail that tells them apart, and the evaluation says so where tuning did not win.
"""
from __future__ import annotations

import re

from domaintune.config import ContaminationConfig
from domaintune.core.chat import final_answer
from domaintune.data.cleaning import row_text, template_grams

_WORD = re.compile(r"\w+")


def _words(row: dict) -> list[str]:
    return _WORD.findall(row_text(row).lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _answer(row: dict) -> str | None:
    return final_answer(row).strip() if row.get("messages") and row["messages"][-1]["role"] == "assistant" else None


class TrainIndex:
    """The training rows' word n-grams (template left out; each with the first row that holds it), and the
    short rows (fewer than n words) whole."""

    def __init__(self, train: list[dict], n: int):
        self.n = n
        self.train = train
        row_words = [_words(row) for row in train]
        row_grams = [_ngrams(words, n) for words in row_words]
        self.template = template_grams(row_grams)
        self.first_row: dict[tuple[str, ...], int] = {}
        self._grams_of: dict[int, set[tuple[str, ...]]] = {}  # training rows `other_answer` compared, as it met them
        self.short: set[tuple[str, ...]] = set()
        for index, (words, grams) in enumerate(zip(row_words, row_grams)):
            for gram in grams - self.template:
                self.first_row.setdefault(gram, index)
            if not grams:
                self.short.add(tuple(words))

    def _own_grams(self, row: dict) -> set[tuple[str, ...]]:
        return _ngrams(_words(row), self.n) - self.template

    def overlap(self, row: dict) -> float:
        """Share of the row's n-grams found in train; a row shorter than n words: 1 if a train row has
        the same words (inside a longer row they are too common to mean anything: "Section 2 .")."""
        words = _words(row)
        if len(words) < self.n:
            return float(tuple(words) in self.short)
        grams = _ngrams(words, self.n) - self.template
        # A row that is all template has nothing of its own to have leaked (identical prompts: the leakage check).
        return sum(gram in self.first_row for gram in grams) / len(grams) if grams else 0.0

    def other_answer(self, row: dict) -> str | None:
        """The answer of the training row that shares most of this row's n-grams (among those that first hold
        one), where it differs from the row's own; else None."""
        grams = self._own_grams(row)
        candidates = {self.first_row[gram] for gram in grams if gram in self.first_row}
        if not candidates:
            return None
        for index in candidates - self._grams_of.keys():
            self._grams_of[index] = self._own_grams(self.train[index])
        nearest = self.train[max(candidates, key=lambda index: len(grams & self._grams_of[index]))]
        other = _answer(nearest)
        return other if other is not None and other != _answer(row) else None


def near_copy_answers(index: TrainIndex, rows: list[dict], threshold: float) -> list[str | None]:
    """Per row: the answer of its nearest training row where the row is contaminated and that answer differs
    from its own, else None."""
    return [index.other_answer(row) if index.overlap(row) >= threshold else None for row in rows]


def check_contamination(train: list[dict], eval_sets: dict[str, list[dict]], config: ContaminationConfig) -> dict:
    """Per evaluation set: rows checked, rows contaminated, how many of those a training row answers otherwise,
    and a few examples with their overlap."""
    index = TrainIndex(train, config.ngram)
    report = {}
    for name, rows in eval_sets.items():
        hits = [(row, score) for row in rows if (score := index.overlap(row)) >= config.threshold]
        others = [index.other_answer(row) for row, _ in hits]
        report[name] = {
            "rows": len(rows),
            "contaminated": len(hits),
            "other_answer": sum(other is not None for other in others),
            "examples": [
                {**_where(row), "overlap": round(score, 3), "text": row_text(row)[:160],
                 **({"answer": _answer(row), "train_answer": other} if other is not None else {})}
                for (row, score), other in list(zip(hits, others))[:5]
            ],
        }
    return report


def _where(row: dict) -> dict:
    source = row.get("source") or {}
    return {"file": source.get("file"), "line": source.get("line")}
