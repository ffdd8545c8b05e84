"""The entity-list answer format, `[NAME - TYPE, ...]` or "No entities found": the one place that
writes it (data preparation from spans, a token head's predictions) and splits it (entity F1,
BIO labels from an answer list)."""
from __future__ import annotations

import re

NO_ENTITIES = "No entities found"
# Separator between an entity's NAME and TYPE; spaces around the dash are required
# so hyphenated names ("Jean-Luc") stay whole, and any number of them is tolerated.
ITEM_SEPARATOR = re.compile(r"\s+-\s+")


def entity_list(text: str, entities: list[dict]) -> str:
    """The answer for character spans (`start`, `end`, `label`) of `text`, in text order."""
    if not entities:
        return NO_ENTITIES
    return "[" + ", ".join(f"{text[e['start']:e['end']]} - {e['label']}" for e in entities) + "]"


def list_items(text: str) -> list[str]:
    """The stripped, non-empty items of the first `[...]` list in `text` ([] without one). A missing
    closing bracket ends the list at the end of its line."""
    start = text.find("[")
    if start < 0:
        return []
    end = text.find("]", start)
    body = text[start + 1 : end] if end >= 0 else text[start + 1 :].split("\n", 1)[0]
    return [item.strip() for item in body.split(",") if item.strip()]


def split_item(item: str) -> tuple[str, str] | None:
    """(NAME, TYPE) of one item, split on the last separator since a name may itself contain " - ";
    None when the item has no separator."""
    separators = list(ITEM_SEPARATOR.finditer(item))
    if not separators:
        return None
    last = separators[-1]
    return item[: last.start()].strip(), item[last.end() :].strip()
