"""The JSON and JSONL files domaintune writes itself (splits, samples, results, summaries). User data
files go through data/readers.py, which reports a bad line instead of failing."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; [] when it doesn't exist."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            # default=str: rejected rows may hold values JSON lacks (Parquet dates, bytes).
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's value; `default` when it doesn't exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
