"""Seeded train/validation/test split, grouped by prompt and stratified by label.

Grouping keeps every row of one prompt in one split: a question seen in training and again
in the test split would make the test score a memory test. Stratifying (by the label column, or by
the answer when answers form a closed set such as yes/no) gives each split the label proportions of
the whole set, so a rare label is not missing from evaluation by chance.
"""
from __future__ import annotations

import random

from domaintune.config import SplitConfig
from domaintune.core.answers import answer_counts, answer_label
from domaintune.core.chat import final_answer
from domaintune.data.cleaning import content_key, earlier_exchanges, prompt_key

HOLDOUTS = ("test", "validation")  # filled first; train takes the rest


def split_rows(rows: list[dict], config: SplitConfig, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test); each keeps the input order. The same seed gives the same split."""
    groups: dict[tuple | str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(prompt_key(row), []).append(index)

    strata: dict[str | None, list[list[int]]] = {}
    stratum_of = _stratum_reader(rows) if config.stratify else None
    for members in groups.values():
        # A prompt seen with several labels goes with its first row's label.
        label = stratum_of(rows[members[0]]) if stratum_of else None
        strata.setdefault(label, []).append(members)

    rng = random.Random(seed)
    fractions = {"test": config.test, "validation": config.validation}
    order = sorted(strata, key=str)  # a fixed order, so the seed alone decides
    sizes = [sum(len(members) for members in strata[label]) for label in order]
    quotas = {name: _apportion(sizes, fractions[name]) for name in HOLDOUTS}
    assigned: dict[int, str] = {}
    for position, label in enumerate(order):
        stratum = strata[label]
        rng.shuffle(stratum)
        targets = {name: quotas[name][position] for name in HOLDOUTS}
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


def sample_rows(rows: list[dict], limit: int) -> list[dict]:
    """At most `limit` of `rows`, in their order. Where labels or closed answers can be read, the cut falls on
    the most common answers first: a rare answer's few rows are the scarce evidence (macro-F1 weighs each
    answer alike), so capping a test split keeps them all while it can."""
    if len(rows) <= limit:
        return rows
    stratum_of = _stratum_reader(rows)
    if stratum_of is None:
        return rows[:limit]
    members: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        members.setdefault(stratum_of(row), []).append(index)
    keep = sorted(index for label, share in _fill_smallest_first(members, limit).items()
                  for index in members[label][:share])
    return [rows[index] for index in keep]


def _fill_smallest_first(members: dict[str, list[int]], limit: int) -> dict[str, int]:
    """How many rows each stratum keeps: an equal share of `limit`, a stratum smaller than its share keeping
    all its rows and leaving the rest to the others (water-filling)."""
    pending = sorted(members, key=lambda label: (len(members[label]), str(label)))
    shares, left = {}, limit
    while pending:
        share = left // len(pending)
        if len(members[pending[0]]) <= share:
            label = pending.pop(0)
            shares[label] = len(members[label])
            left -= shares[label]
            continue
        extra = left - share * len(pending)  # the remainder: one more row to each of the largest strata
        for position, label in enumerate(pending):
            shares[label] = share + (position >= len(pending) - extra)
        break
    return shares


def _apportion(sizes: list[int], fraction: float) -> list[int]:
    """Each stratum's share of round(total x fraction) rows, by largest remainder: the holdout is as big as
    without strata (rounding every small stratum up would make a 10% split of 6-row strata 17%)."""
    exact = [size * fraction for size in sizes]
    shares = [int(value) for value in exact]
    missing = round(sum(sizes) * fraction) - sum(shares)
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[:max(0, missing)]:
        shares[i] += 1
    return shares


def _stratum_reader(rows: list[dict]):
    """What to stratify by: the rows' labels, or else their answers when those form a closed set (yes/no,
    option letters, a label column written as chat); None for free-text answers."""
    if rows and all(row.get("label") is not None for row in rows):
        return lambda row: row["label"]
    if answer_counts(rows) is not None:
        return lambda row: answer_label(final_answer(row))
    return None


def check_leakage(train: list[dict], others: list[dict]) -> list[dict]:
    """The rows of `others` whose prompt also occurs in `train`."""
    seen = {prompt_key(row) for row in train}
    return [row for row in others if prompt_key(row) in seen]


def continued_in_train(train: list[dict], others: list[dict]) -> list[dict]:
    """The conversations of `others` that a train row continues: their answer is then trained on (a file that
    holds each conversation also cut after every turn has both [u1, a1] and [u1, a1, u2, a2])."""
    earlier = {key for row in train for key in earlier_exchanges(row)}
    return [row for row in others if "messages" in row and content_key(row) in earlier]
