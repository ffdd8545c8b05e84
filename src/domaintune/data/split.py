"""Seeded train/validation/test split, grouped by prompt and stratified by label.

Grouping keeps every row of one prompt in one split: a question seen in training and again
in the test split would make the test score a memory test. Stratifying gives each split the
label proportions of the whole set, so a rare label is not missing from evaluation by chance.
"""
from __future__ import annotations

import random

from domaintune.config import SplitConfig
from domaintune.data.cleaning import prompt_key

HOLDOUTS = ("test", "validation")  # filled first; train takes the rest


def split_rows(rows: list[dict], config: SplitConfig, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test); each keeps the input order. The same seed gives the same split."""
    groups: dict[tuple | str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(prompt_key(row), []).append(index)

    stratify = config.stratify and bool(rows) and all(row.get("label") is not None for row in rows)
    strata: dict[str | None, list[list[int]]] = {}
    for members in groups.values():
        # A prompt seen with several labels goes with its first row's label.
        label = rows[members[0]]["label"] if stratify else None
        strata.setdefault(label, []).append(members)

    rng = random.Random(seed)
    fractions = {"test": config.test, "validation": config.validation}
    assigned: dict[int, str] = {}
    for label in sorted(strata, key=str):  # a fixed order, so the seed alone decides
        stratum = strata[label]
        rng.shuffle(stratum)
        size = sum(len(members) for members in stratum)
        targets = {name: round(size * fractions[name]) for name in HOLDOUTS}
        filled = dict.fromkeys(HOLDOUTS, 0)
        for members in stratum:
            # A group goes to a holdout only if it fits, so a big group cannot empty train.
            name = next((n for n in HOLDOUTS if filled[n] + len(members) <= targets[n]), "train")
            if name != "train":
                filled[name] += len(members)
            for index in members:
                assigned[index] = name

    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for index, row in enumerate(rows):
        splits[assigned[index]].append(row)
    return splits["train"], splits["validation"], splits["test"]


def check_leakage(train: list[dict], others: list[dict]) -> list[dict]:
    """The rows of `others` whose prompt also occurs in `train`."""
    seen = {prompt_key(row) for row in train}
    return [row for row in others if prompt_key(row) in seen]
