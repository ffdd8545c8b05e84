"""Instruction tuning: every row's request becomes an instruction opened by the task description.

Labelled rows (text + label) also list the answers, so a classification set becomes
"Classify the review. Answer with one of: negative, positive.\n\n<text>" with the label as the
answer. The prepared split files are rewritten once after `data prepare`, so training,
evaluation and the report all see the same instructions.
"""
from __future__ import annotations

from pathlib import Path

from domaintune.config.objectives import InstructConfig
from domaintune.core.errors import DomaintuneError
from domaintune.storage.jsonl import read_jsonl, write_jsonl

SUMMARY = "rows rewritten into instructions from a task description; labelled rows list the allowed answers."
Config = InstructConfig  # the registry and the recipe know an objective by its Config
SPLITS = ("train", "validation", "test")


def after_prepare(data_dir: Path, config: Config) -> None:
    rewrite_splits(data_dir, config.task)


def label_set(rows: list[dict]) -> list[str]:
    labels: list[str] = []
    for row in rows:
        label = row.get("label")
        if label is not None and label not in labels:
            labels.append(label)
    return sorted(labels)


def instruction(task: str, labels: list[str], request: str) -> str:
    head = task.strip()
    if labels:
        head += f"{'' if head.endswith(('.', '?', '!', ':')) else '.'} Answer with one of: {', '.join(labels)}."
    return f"{head}\n\n{request}"


def rewrite_row(row: dict, task: str, labels: list[str]) -> dict:
    messages = [dict(message) for message in row["messages"]]
    user = next((m for m in reversed(messages) if m["role"] == "user"), None)
    if user is None:
        raise DomaintuneError("objective instruct: a row has no user turn to turn into an instruction")
    user["content"] = instruction(task, labels if row.get("label") is not None else [], user["content"])
    return {**row, "messages": messages}


def rewrite_splits(data_dir: Path, task: str) -> list[str]:
    """Rewrite the prepared splits in place; returns the label set (empty without labelled rows)."""
    splits = {}
    for split in SPLITS:
        path = Path(data_dir) / f"{split}.jsonl"
        if path.exists():
            splits[split] = read_jsonl(path)
    if any("messages" not in row for rows in splits.values() for row in rows):
        raise DomaintuneError("objective instruct needs conversations or labelled rows, not raw text (use pretrain)")
    labels = label_set(splits.get("train", []))
    for split, rows in splits.items():
        write_jsonl(Path(data_dir) / f"{split}.jsonl", [rewrite_row(row, task, labels) for row in rows])
    return labels
