"""Near-duplicates: rows that say almost the same thing (other case or punctuation, a word changed
in a long row).

Rows are compared as sets of word 3-grams (lower case, punctuation ignored), so a one-word change
in a short row keeps it distinct: in a 20-word sentence it shares only ~0.8 of its 3-grams.
MinHash sketches of these sets go into an LSH index (datasketch), which proposes
candidate pairs in about linear time; each candidate is then confirmed with the exact Jaccard
similarity, so LSH's false positives never remove a row. The first row of each near-duplicate
group is kept, the others are set aside naming the row they resemble.

A conversation is a near-duplicate only if its answer is alike too, case included: the answer is
what the model learns to write, and "[SILICON VALLEY BANK - ORGANIZATION]" for the prompt in capitals
is not "[Silicon Valley Bank - ORGANIZATION]". Like prompts with different answers are kept, as
exact dedup keeps them.

System prompts count, less what many rows' system prompts share (`template_grams`): a file that gives
each row its own document there (an email to read, a passage) has rows that differ only in it. Left
out, 16 of the task suite's 100 invoice emails were set aside as copies of others with the same question.
"""
from __future__ import annotations

import functools
import re

from domaintune.config import NearDedupConfig
from domaintune.data.cleaning import Removed, answer_text, row_text, system_text, template_grams, where

SHINGLE = 3  # words
_WORD = re.compile(r"\w+")


def shingles(rows: list[dict]) -> list[set[bytes]]:
    """Each row's word 3-grams: its turns', and its system prompt's that are not the data's template."""
    system = [_word_grams(text.lower()) if (text := system_text(row)) else set() for row in rows]
    shared = template_grams(system)
    return [_word_grams(row_text(row).lower()) | (grams - shared) for row, grams in zip(rows, system)]


def _answer_grams(row: dict) -> set[bytes] | None:
    # A preference row's answers are its best and its worse ones: pairs sharing the best answer differ.
    return _word_grams("\n".join([answer_text(row), *row.get("worse", [])])) if "messages" in row else None


def _word_grams(text: str) -> set[bytes]:
    # A text without word characters (emoji, punctuation) is its symbols: else all such rows would be one empty gram.
    words = _WORD.findall(text) or text.split()
    if len(words) <= SHINGLE:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + SHINGLE]).encode("utf-8") for i in range(len(words) - SHINGLE + 1)}


@functools.cache
def _bands_and_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """The LSH shape for a threshold: datasketch finds it by numerical integration (~0.1 s), once here."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_dedup_rows(rows: list[dict], config: NearDedupConfig, seed: int = 1) -> tuple[list[dict], list[Removed], list[dict]]:
    """(kept rows, set-aside rows, example pairs {kept, removed, similarity})."""
    from datasketch import MinHash, MinHashLSH

    sets = shingles(rows)
    # bulk() hashes all rows with numpy in one go: far faster than update() per shingle.
    sketches = MinHash.bulk(sets, num_perm=config.num_perm, seed=seed)
    lsh = MinHashLSH(num_perm=config.num_perm, params=_bands_and_rows(config.threshold, config.num_perm))
    kept, removed, pairs = [], [], []
    for index, (row, sketch) in enumerate(zip(rows, sketches)):
        best, similarity = None, 0.0
        for candidate in lsh.query(sketch):
            score = jaccard(sets[index], sets[candidate])
            if score >= config.threshold and score > similarity and _answers_alike(rows[index], rows[candidate], config):
                best, similarity = candidate, score
        if best is None:
            lsh.insert(index, sketch)  # only kept rows go in, so a row is compared with what survives
            kept.append(row)
            continue
        original = rows[best]
        removed.append(Removed(row, "near-duplicate", f"near-duplicate of {where(original)} (similarity {similarity:.2f})"))
        pairs.append({"kept": _preview(original), "removed": _preview(row), "similarity": round(similarity, 3)})
    return kept, removed, pairs


def _answers_alike(row: dict, other: dict, config: NearDedupConfig) -> bool:
    mine, theirs = _answer_grams(row), _answer_grams(other)
    return mine is None or theirs is None or jaccard(mine, theirs) >= config.threshold


def _preview(row: dict, limit: int = 160) -> str:
    text = row_text(row).replace("\n", " | ")
    return text if len(text) <= limit else text[:limit] + "…"

