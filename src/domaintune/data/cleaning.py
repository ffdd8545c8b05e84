"""Normalise text, set aside unusable rows, remove exact duplicates.

Rows are canonical rows (see formats.py) carrying `source: {"file", "line"}` (and `item`, the
index of a JSON array's element). Rows that are
set aside come back as `Removed` so prepare can write them to removed.jsonl with a reason.
"""
from __future__ import annotations

import re
import textwrap
import unicodedata
from collections import Counter, defaultdict
from typing import Callable, NamedTuple

from domaintune.core.chat import message_text

_SPACES = re.compile(r"[^\S\n]+")  # any whitespace run except newlines (tabs, NBSP, ...)
_INDENT = re.compile(r"[^\S\n]*")
_BLANK_LINES = re.compile(r"\n{3,}")


class Removed(NamedTuple):
    row: dict
    kind: str  # what the data card counts, e.g. "too long"
    reason: str  # what removed.jsonl says, e.g. "too long: 1400 tokens > 1024"


def normalise_text(text: str) -> str:
    """NFC; each line's indentation kept (less what every line shares) and each run of spaces or tabs after
    it one space; no space at line ends; at most one blank line; no blank lines around the text."""
    # NFC makes "é" typed as e + combining accent equal to the precomposed "é", for dedup and splits.
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = []
    for line in text.split("\n"):
        # Indentation is meaning in code, YAML and nested lists: it stays.
        indent = _INDENT.match(line).group()
        lines.append(indent + _SPACES.sub(" ", line[len(indent):]).rstrip())
    return _BLANK_LINES.sub("\n\n", textwrap.dedent("\n".join(lines))).strip("\n")


def normalise_row(row: dict) -> dict:
    row = dict(row)
    if "messages" in row:
        row["messages"] = [{**message, "content": normalise_text(message["content"])} for message in row["messages"]]
        if isinstance(row.get("label"), str):
            # The label is also the answer of labelled rows; keep both spelled the same.
            row["label"] = normalise_text(row["label"])
        if "worse" in row:
            row["worse"] = [normalise_text(answer) for answer in row["worse"]]
    else:
        row["text"] = normalise_text(row["text"])
    return row


def answer_text(row: dict) -> str:
    """What the model learns to produce: the final assistant message (with its tool calls), or a raw text row's text."""
    return message_text(row["messages"][-1]) if "messages" in row else row["text"]


def row_text(row: dict) -> str:
    """The row's own words: its turns without the system prompt (which every row may share), or its text."""
    if "messages" not in row:
        return row["text"]
    turns = [message_text(message) for message in row["messages"] if message["role"] != "system"]
    return "\n".join(turns + row.get("worse", []))


def system_text(row: dict) -> str:
    """A conversation's system prompts: shared by every row in some files, in others the row's own document."""
    return "\n".join(message_text(message) for message in row.get("messages", []) if message["role"] == "system")


TEMPLATE_SHARE = 0.2


def template_grams(gram_sets: list[set]) -> set:
    """The word n-grams that more than a fifth of the rows hold (and 2 rows or more): the data's template (an
    instruction, a label prompt, a system prompt every row shares), which says nothing about any one row. Rows
    compared with it left out can carry their own content anywhere, a document in the system prompt included."""
    rows_with = Counter(gram for grams in gram_sets for gram in grams)
    common = max(1, TEMPLATE_SHARE * len(gram_sets))
    return {gram for gram, rows in rows_with.items() if rows > common}


def where(row: dict) -> str:
    """`file:line` of a row, with the item of a JSON array's element (several can share a line)."""
    source = row["source"]
    item = f" item {source['item']}" if source.get("item") is not None else ""
    return f"{source['file']}:{source['line']}{item}"


def char_length(row: dict) -> int:
    return sum(len(message_text(message)) for message in row["messages"]) if "messages" in row else len(row["text"])


def prompt_key(row: dict) -> tuple | str:
    """Everything before the answer (normalised): rows sharing it ask the same question.
    Raw text rows have no prompt; their text stands in."""
    if "messages" not in row:
        return normalise_text(row["text"])
    return _messages_key(row["messages"][:-1])


def content_key(row: dict) -> tuple | str:
    """The whole normalised row; equal keys are exact duplicates."""
    if "messages" not in row:
        return normalise_text(row["text"])
    # Two pairs with the same prompt and chosen answer differ in what they were preferred to.
    return _messages_key(row["messages"]) + tuple(("worse", normalise_text(answer)) for answer in row.get("worse", []))


def earlier_exchanges(row: dict) -> list[tuple]:
    """The content keys of a conversation cut after each assistant turn before its last one."""
    messages = row.get("messages", [])
    return [_messages_key(messages[:end]) for end in range(1, len(messages))
            if messages[end - 1]["role"] == "assistant"]


def _messages_key(messages: list[dict]) -> tuple:
    return tuple((message["role"], normalise_text(message_text(message))) for message in messages)


def filter_row(
    row: dict, min_chars: int, max_tokens: int, count_tokens: Callable[[dict], int] | None
) -> Removed | None:
    """Why a (normalised) row is unusable, or None. Tokens are counted only for rows that pass the rest."""
    answer = answer_text(row)
    if not answer:
        return Removed(row, "empty", "empty")
    if "messages" in row and any(not m["content"] for m in row["messages"] if m["role"] == "user"):
        return Removed(row, "empty", "empty user message")
    if len(answer) < min_chars:
        return Removed(row, "too short", f"too short: {len(answer)} chars < {min_chars}")
    if count_tokens is not None:
        tokens = count_tokens(row)
        if tokens > max_tokens:
            return Removed(row, "too long", f"too long: {tokens} tokens > {max_tokens}")
    return None


def filter_rows(
    rows: list[dict], min_chars: int, max_tokens: int, count_tokens: Callable[[dict], int] | None
) -> tuple[list[dict], list[Removed]]:
    kept, removed = [], []
    for row in rows:
        reason = filter_row(row, min_chars, max_tokens, count_tokens)
        if reason is None:
            kept.append(row)
        else:
            removed.append(reason)
    return kept, removed


def dedup_rows(rows: list[dict]) -> tuple[list[dict], list[Removed]]:
    """Keep the first of each set of exact duplicates; the others name the row they repeat."""
    first_seen: dict[tuple | str, dict] = {}
    kept, removed = [], []
    for row in rows:
        original = first_seen.setdefault(content_key(row), row)
        if original is row:
            kept.append(row)
        else:
            removed.append(Removed(row, "duplicate", f"duplicate of {where(original)}"))
    return kept, removed


def count_conflicts(rows: list[dict]) -> int:
    """How many prompts appear with more than one answer: kept, but worth a look in the card."""
    answers: dict[tuple | str, set[str]] = defaultdict(set)
    for row in rows:
        if "messages" in row:
            answers[prompt_key(row)].add(answer_text(row))
    return sum(1 for seen in answers.values() if len(seen) > 1)
