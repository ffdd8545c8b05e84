"""The JSON and JSONL files domaintune writes itself (splits, samples, results, summaries). User data
files go through data/readers.py, which reports a bad line instead of failing."""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from domaintune.core.errors import DomaintuneError


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; [] when it doesn't exist. A process killed mid-write (training
    appends to metrics.jsonl as it goes) leaves a partial last line: that line is skipped, while a bad
    line anywhere else is an error naming it."""
    if not path.is_file():
        return []
    # Split on newlines only: str.splitlines would also cut at U+2028 inside a model's answer.
    lines = [line for line in _text(path).split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise DomaintuneError(f"{path} line {number}: not valid JSON ({error.msg})") from None
    return records


@contextmanager
def _written_aside(path: Path) -> Iterator[TextIO]:
    """A file written aside and renamed into place, so a reader (a page polling a run, another process) or a
    crash never sees half of it."""
    staging = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with staging.open("w", encoding="utf-8") as handle:
            yield handle
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with _written_aside(path) as handle:
        for record in records:
            # default=str: rejected rows may hold values JSON lacks (Parquet dates, bytes).
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's value; `default` when it doesn't exist."""
    if not path.is_file():
        return default
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as error:
        raise DomaintuneError(f"{path}: not valid JSON ({error})") from None


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:  # a damaged file, or not one of ours: named, not a crash
        raise DomaintuneError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def write_json(path: Path, value: Any) -> None:
    with _written_aside(path) as handle:
        handle.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
