"""Quality filters: repetition, symbol soup, boilerplate, wrong language.

Each filter looks at the row's own words (not the system prompt) and gives a reason the card
counts; thresholds are conservative so that normal short rows (a sentence and its entities)
pass. Length is filtered earlier by data.min_chars and data.max_tokens.
"""
from __future__ import annotations

import re

from domaintune.config import QualityConfig
from domaintune.data.cleaning import Removed, row_text

REPETITION_NGRAM = 3
REPETITION_MIN_WORDS = 20  # shorter rows have too few n-grams for a ratio to mean anything
_SYMBOL_RUN = re.compile(r"([^\w\s])\1+")
LANGUAGE_MIN_LETTERS = 40  # language identification guesses on shorter text
_BOILERPLATE = re.compile(
    r"all rights reserved|cookies?\b.*\b(?:use|accept|policy)|accept (?:all )?cookies|privacy policy|terms (?:of|and) "
    r"(?:use|service|conditions)|click here|subscribe to|sign up for|unsubscribe|javascript|share (?:on|this)|"
    r"follow us|page \d+ of \d+|^\s*(?:home|menu|back to top|skip to (?:main )?content|next|previous)\s*$|©|\(c\) \d{4}",
    re.IGNORECASE,
)


def repetition_ratio(text: str, n: int = REPETITION_NGRAM) -> float:
    """Share of word n-grams that repeat an earlier one (Gopher's duplicate n-gram measure)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are neither letters nor digits. A run of one symbol counts
    once: a rule line (-----) under a signature is layout, not noise."""
    visible = [char for char in _SYMBOL_RUN.sub(r"\1", text) if not char.isspace()]
    return sum(not char.isalnum() for char in visible) / len(visible) if visible else 0.0


def boilerplate_ratio(text: str) -> float:
    lines = [line for line in text.splitlines() if line.strip()]
    return sum(bool(_BOILERPLATE.search(line)) for line in lines) / len(lines) if lines else 0.0


def language(text: str) -> str | None:
    """ISO 639-1 code of the text's language (py3langid, offline), or None when it is too short to tell."""
    import py3langid

    if sum(char.isalpha() for char in text) < LANGUAGE_MIN_LETTERS:
        return None
    return py3langid.classify(text)[0]


def quality_problem(row: dict, config: QualityConfig) -> Removed | None:
    text = row_text(row)
    if config.max_repetition is not None and len(text.split()) >= REPETITION_MIN_WORDS:
        ratio = repetition_ratio(text)
        if ratio > config.max_repetition:
            return Removed(row, "repetitive", f"repetitive: {ratio:.0%} of word 3-grams repeat > {config.max_repetition:.0%}")
    if config.max_symbol_ratio is not None:
        ratio = symbol_ratio(text)
        if ratio > config.max_symbol_ratio:
            return Removed(row, "symbols", f"symbols: {ratio:.0%} of characters are not letters or digits > {config.max_symbol_ratio:.0%}")
    if config.max_boilerplate is not None:
        ratio = boilerplate_ratio(text)
        if ratio > config.max_boilerplate:
            return Removed(row, "boilerplate", f"boilerplate: {ratio:.0%} of lines > {config.max_boilerplate:.0%}")
    if config.languages:
        found = language(text)
        if found is not None and found not in config.languages:
            return Removed(row, "language", f"language: {found}, not one of {', '.join(config.languages)}")
    return None


def quality_filter(rows: list[dict], config: QualityConfig) -> tuple[list[dict], list[Removed]]:
    if not config.enabled:
        return rows, []
    kept, removed = [], []
    for row in rows:
        problem = quality_problem(row, config)
        if problem is None:
            kept.append(row)
        else:
            removed.append(problem)
    return kept, removed
