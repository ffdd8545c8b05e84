"""What the task modules share: reading the wheel's rows, capping them, writing the user's file."""
from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path


def source_rows(wheel: Path, member: str) -> list[dict]:
    with zipfile.ZipFile(wheel) as archive:
        return [json.loads(line) for line in archive.read(member).decode("utf-8").splitlines() if line.strip()]


def capped(rows: list[dict], limit: int, seed: int = 0) -> list[dict]:
    """At most `limit` rows, a seeded random sample that keeps the original order."""
    if len(rows) <= limit:
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), limit))
    return [row for index, row in enumerate(rows) if index in keep]


def message(source: dict, role: str) -> str:
    return next(item["content"] for item in source["input"] if item["role"] == role)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_json(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path, index=False)
