"""Closed labels, skewed: the severity of a Windows event-log entry (Information, Warning, Error).

evals `event_categories` (879 rows, 97% Information). Every Warning and Error row is kept and the
rest is Information up to the cap, so the test split holds a few of each rare label while the
majority answer still scores about 0.9 accuracy: the task a model that always says "Information"
wins on accuracy and loses on macro-F1. Written as a two-column CSV, as exported from a log tool.
"""
from .common import capped, message, write_csv


def convert(source: list[dict], limit: int) -> list[dict]:
    rare = [row for row in source if row["ideal"] != "Information"]
    common = capped([row for row in source if row["ideal"] == "Information"], limit - len(rare))
    kept = [row for row in source if row in rare or row in common]
    return [{"event": message(row, "user"), "severity": row["ideal"]} for row in kept]


TASK = dict(
    name="event-severity", shape="closed labels, 3 classes, 90% one class", member="evals/registry/data/event_categories/samples.jsonl",
    filename="events.csv", max_rows=260, task="Label the severity of this Windows event log entry.",
    convert=convert, write=write_csv,
)
