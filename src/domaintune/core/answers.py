"""Short answers read as labels, and whether a set of rows answers from a closed set of them.

The data layer (stratified splits, label balancing), `init` and evaluation (accuracy, metric choice)
all read answers this way, so "Positive." and "positive" are one answer everywhere.
"""
from __future__ import annotations

import re
import string
from collections import Counter

from domaintune.core.chat import final_answer

MAX_LABELS = 20  # more distinct answers than this is free text, not a label set
MAX_LABEL_WORDS = 4  # a label is a few words; longer answers are free text
_STRIP = string.punctuation + string.whitespace + "“”‘’«»"
_WHITESPACE = re.compile(r"\s+")


def answer_label(text: str) -> str:
    # Models often answer "Positive." or '"positive"\nBecause ...': only the first line counts.
    stripped = text.strip()
    first_line = stripped.splitlines()[0] if stripped else ""
    return _WHITESPACE.sub(" ", first_line.strip(_STRIP)).strip().casefold()


def answer_counts(rows: list[dict]) -> Counter | None:
    """Rows per answer label when the rows' final answers form a closed set: 2 to MAX_LABELS short labels,
    each given on two rows or more on average. None for free text (answers that rarely repeat), a single
    answer, or rows without a conversation."""
    if not rows or any("messages" not in row for row in rows):
        return None
    counts = Counter(answer_label(final_answer(row)) for row in rows)
    closed = (1 < len(counts) <= min(MAX_LABELS, len(rows) // 2)
              and all(len(label.split()) <= MAX_LABEL_WORDS for label in counts))
    return counts if closed else None
