"""Label balancing for closed answer sets: training rows of the rarer answers are repeated.

A 90/7/3 split trains a small model to answer the majority label to everything (it scores 0.9
accuracy and learns nothing). Repeating rare rows until every answer is equally frequent
over-fits those few rows instead, so each answer's count is raised only to the geometric mean of
its own count and the most frequent answer's: 600/20 becomes 600/110, 383/50 becomes 383/138.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict

from domaintune.core.answers import answer_counts, answer_label
from domaintune.core.chat import final_answer


def balanced_rows(rows: list[dict], seed: int = 0) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """The rows with rare answers repeated (shuffled, seeded), and per answer (rows before, after).
    Rows that do not answer from a closed label set (`answer_counts`) are returned unchanged."""
    if answer_counts(rows) is None:
        return rows, {}
    by_answer: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_answer[answer_label(final_answer(row))].append(row)
    most = max(map(len, by_answer.values()))
    generator = random.Random(seed)
    balanced, counts = [], {}
    for answer, group in by_answer.items():
        target = max(len(group), round(math.sqrt(len(group) * most)))
        extra = [group[index % len(group)] for index in range(target - len(group))]
        balanced += group + extra
        counts[answer] = (len(group), target)
    generator.shuffle(balanced)
    return balanced, counts
