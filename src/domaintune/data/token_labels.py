"""Entity spans for token classification: from span annotations or from `NAME - TYPE` answer lists,
to BIO tags on a tokenizer's offsets, and back from predicted tags to the answer list.

A list such as `[SILICON VALLEY BANK - ORGANIZATION, California - LOCATION, California - LOCATION]`
names entities in text order, one item per occurrence. Each item is matched to the first free
occurrence of its name after the previous item's match (whole words first, case-sensitive first),
so repeated names land on successive occurrences. An item whose name does not occur (often enough)
in the text makes the row unusable: `ListMismatch` says which name and why, and the caller sets
the row aside with that reason instead of training on partial labels.
"""
from __future__ import annotations

import re

from domaintune.core.entities import NO_ENTITIES, entity_list, list_items, split_item

OUTSIDE = "O"


class ListMismatch(ValueError):
    """An answer list that does not fit its text; `reason` names the entity."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def answer_items(answer: str) -> list[tuple[str, str]]:
    """(NAME, TYPE) items of an answer list, names as written (parse_entities case-folds them)."""
    items = []
    for item in list_items(answer):
        parts = split_item(item)
        if parts is None:
            raise ListMismatch(f"item {item!r} has no ' - TYPE'")
        items.append((parts[0], parts[1].upper()))
    return items


def _occurrences(text: str, name: str, whole_words: bool, ignore_case: bool) -> list[int]:
    pattern = re.escape(name)
    if whole_words:
        pattern = rf"(?<!\w){pattern}(?!\w)"
    return [m.start() for m in re.finditer(pattern, text, flags=re.IGNORECASE if ignore_case else 0)]


def spans_from_list(text: str, answer: str) -> list[dict]:
    """Character spans {start, end, label} for an answer list, matched back to the text in order."""
    spans: list[dict] = []
    taken: list[tuple[int, int]] = []
    cursor = 0
    for name, kind in answer_items(answer):
        found = None
        for whole_words, ignore_case in ((True, False), (False, False), (True, True), (False, True)):
            starts = [s for s in _occurrences(text, name, whole_words, ignore_case)
                      if not any(s < end and s + len(name) > start for start, end in taken)]
            # The next free occurrence after the previous entity; an earlier one if the list is out of order.
            found = next((s for s in starts if s >= cursor), starts[0] if starts else None)
            if found is not None:
                break
        if found is None:
            listed = sum(1 for other, _ in answer_items(answer) if other == name)
            if re.search(re.escape(name), text, flags=re.IGNORECASE):
                raise ListMismatch(f"entity {name!r} is listed {listed} times but occurs fewer times in the text")
            raise ListMismatch(f"entity {name!r} does not occur in the text")
        spans.append({"start": found, "end": found + len(name), "label": kind})
        taken.append((found, found + len(name)))
        cursor = found + len(name)
    return sorted(spans, key=lambda span: span["start"])


def row_spans(text: str, row: dict) -> list[dict]:
    """A conversation row's entity spans: its own `entities` when they still fit the text, else its answer list."""
    answer = row["messages"][-1]["content"]
    spans = row.get("entities")
    if spans is not None and all(span["end"] <= len(text) for span in spans) and entity_list(text, spans) == answer:
        return spans
    return spans_from_list(text, answer)


def bio_labels(types: list[str]) -> list[str]:
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in ("B", "I")]


def bio_tags(offsets: list[tuple[int, int]], spans: list[dict]) -> list[str | None]:
    """One tag per token: B- on a span's first token, I- on the rest, O outside, None for special tokens."""
    tags: list[str | None] = []
    for start, end in offsets:
        if start == end:
            tags.append(None)
            continue
        span = next((s for s in spans if s["start"] <= start < s["end"] or start < s["start"] < end), None)
        if span is None:
            tags.append(OUTSIDE)
        else:
            inside = tags and tags[-1] in (f"B-{span['label']}", f"I-{span['label']}") and start > span["start"]
            tags.append(f"{'I' if inside else 'B'}-{span['label']}")
    return tags


def spans_from_tags(offsets: list[tuple[int, int]], tags: list[str | None]) -> list[dict]:
    """Entity spans from predicted tags; an O or special token closes an entity, and an I- that does not
    continue its type opens a new one."""
    spans: list[dict] = []
    open_span = None
    for (start, end), tag in zip(offsets, tags):
        if tag is None or tag == OUTSIDE or start == end:
            open_span = None
            continue
        prefix, kind = tag.split("-", 1)
        if prefix == "I" and open_span is not None and open_span["label"] == kind:
            open_span["end"] = end
        else:
            open_span = {"start": start, "end": end, "label": kind}
            spans.append(open_span)
    return spans


def answer_from_spans(text: str, spans: list[dict]) -> str:
    return entity_list(text, spans) if spans else NO_ENTITIES
