"""The data pipeline: read → convert → normalise → filter → dedup → split → leakage check.

Nothing is dropped silently: rows that do not fit their format go to rejected.jsonl, rows
set aside later go to removed.jsonl, each with its file, line and reason, and data_card.json
counts all of it (read = rejected + removed + kept).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from rich.console import Console

from domaintune.config import DataConfig
from domaintune.data.cleaning import Removed, count_conflicts, dedup_rows, filter_rows, normalise_row
from domaintune.data.formats import RowError, resolve_format, to_canonical
from domaintune.data.readers import RawRow, read_files
from domaintune.data.split import check_leakage, split_rows
from domaintune.errors import DomaintuneError

SPLITS = ("train", "validation", "test")


def prepare_dataset(
    config: DataConfig,
    out_dir: Path,
    seed: int,
    count_tokens: Callable[[dict], int] | None = None,
    console: Console | None = None,
) -> dict:
    """Prepare the splits under `out_dir` and return the data card (also written as data_card.json)."""
    if not config.train:
        raise DomaintuneError("data.train is empty: list at least one data file (JSONL, JSON, CSV or Parquet)")
    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count_tokens = _remembered(count_tokens)

    files, parts, rejected = _read_parts(config)
    read = sum(file["rows"] for file in files)
    removed, counts = _clean_parts(parts, config, count_tokens)
    if not any(parts.values()):
        _write_set_aside(out_dir, rejected, removed)  # so the user can see why
        raise DomaintuneError(
            f"no usable rows: {read} read, {len(rejected)} rejected (see {out_dir / 'rejected.jsonl'}), "
            f"{len(removed)} removed (see {out_dir / 'removed.jsonl'})"
        )

    # Explicit validation/test files replace that share of the split.
    explicit = {part: 0.0 for part in ("validation", "test") if getattr(config, part)}
    train, validation, test = split_rows(parts["train"], config.split.model_copy(update=explicit), seed)
    if not train:
        _write_set_aside(out_dir, rejected, removed)
        raise DomaintuneError(
            f"the train split is empty: {len(parts['train'])} usable rows came from data.train "
            f"(see {out_dir / 'rejected.jsonl'} and {out_dir / 'removed.jsonl'})"
        )
    splits = {
        "train": train,
        "validation": parts["validation"] if config.validation else validation,
        "test": parts["test"] if config.test else test,
    }
    counts["leaked"] = _remove_leaks(splits, removed)

    _write_set_aside(out_dir, rejected, removed)
    for part, rows in splits.items():
        _write_jsonl(out_dir / f"{part}.jsonl", rows)
    card = {
        "seed": seed,
        "files": files,
        "totals": {
            "read": read,
            "rejected": len(rejected),
            "removed": len(removed),
            "removed_by_reason": dict(Counter(item.kind for item in removed).most_common()),
            **counts,
            "kept": sum(len(rows) for rows in splits.values()),
        },
        "rejected_reasons": dict(Counter(record["reason"] for record in rejected).most_common()),
        "splits": {part: len(rows) for part, rows in splits.items()},
    }
    if any(row.get("label") is not None for rows in splits.values() for row in rows):
        card["labels"] = {part: _label_counts(rows) for part, rows in splits.items()}
    card["lengths"] = {part: _lengths(rows, count_tokens) for part, rows in splits.items()}
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _print_summary(console, card, out_dir)
    return card


def _read_parts(config: DataConfig) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """Per-file card entries, canonical rows per part (train/validation/test files), rejected records."""
    files: list[dict] = []
    parts: dict[str, list[dict]] = {part: [] for part in SPLITS}
    rejected: list[dict] = []
    for part in SPLITS:
        for path, raw_rows in read_files(getattr(config, part)):
            fmt = resolve_format(path, raw_rows, config)
            rows, bad = _convert(raw_rows, fmt, config)
            files.append({"file": str(path), "part": part, "format": fmt, "rows": len(raw_rows), "rejected": len(bad)})
            parts[part] += rows
            rejected += bad
    return files, parts, rejected


def _clean_parts(
    parts: dict[str, list[dict]], config: DataConfig, count_tokens: Callable[[dict], int] | None
) -> tuple[list[Removed], dict[str, int]]:
    """Normalise, filter and dedup each part in place; return what was set aside and the counts."""
    # Each part is cleaned on its own: an eval row repeating a train row is leakage, handled after the split.
    removed: list[Removed] = []
    counts = {"duplicates": 0, "conflicting_duplicates": 0}
    for part, rows in parts.items():
        rows = [normalise_row(row) for row in rows]
        rows, dropped = filter_rows(rows, config.min_chars, config.max_tokens, count_tokens)
        removed += dropped
        unique, repeated = dedup_rows(rows)
        counts["duplicates"] += len(repeated)
        if config.dedup:
            rows = unique
            removed += repeated
        counts["conflicting_duplicates"] += count_conflicts(rows)
        parts[part] = rows
    return removed, counts


def _remove_leaks(splits: dict[str, list[dict]], removed: list[Removed]) -> int:
    """Drop eval rows whose prompt is also in train (explicit files can repeat one); return how many."""
    leaked = 0
    for part in ("validation", "test"):
        leaks = {id(row) for row in check_leakage(splits["train"], splits[part])}
        removed += [Removed(row, "prompt also in train", "prompt also in train") for row in splits[part] if id(row) in leaks]
        splits[part] = [row for row in splits[part] if id(row) not in leaks]
        leaked += len(leaks)
    return leaked


def _convert(raw_rows: list[RawRow], fmt: str, config: DataConfig) -> tuple[list[dict], list[dict]]:
    """Canonical rows (with their source) and rejected records."""
    rows, rejected = [], []
    for raw in raw_rows:
        if raw.data is None:
            rejected.append({"file": raw.file, "line": raw.line, "reason": raw.error, "row": raw.raw})
            continue
        try:
            row = to_canonical(raw.data, fmt, config)
        except RowError as error:
            rejected.append({"file": raw.file, "line": raw.line, "reason": error.reason, "row": raw.data})
            continue
        row["source"] = {"file": raw.file, "line": raw.line}
        rows.append(row)
    return rows, rejected


def _remembered(count_tokens: Callable[[dict], int] | None) -> Callable[[dict], int] | None:
    """Tokenise each row once: the length filter and the card's statistics both need the count."""
    if count_tokens is None:
        return None
    counts: dict[tuple[str, int], int] = {}

    def count(row: dict) -> int:
        key = (row["source"]["file"], row["source"]["line"])  # a row's source identifies it
        if key not in counts:
            counts[key] = count_tokens(row)
        return counts[key]

    return count


def _write_set_aside(out_dir: Path, rejected: list[dict], removed: list[Removed]) -> None:
    _write_jsonl(out_dir / "rejected.jsonl", rejected)
    _write_jsonl(out_dir / "removed.jsonl", [_removed_record(item) for item in removed])


def _removed_record(item: Removed) -> dict:
    row = {key: value for key, value in item.row.items() if key != "source"}
    return {**item.row["source"], "reason": item.reason, "row": row}


def _label_counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(row["label"] for row in rows if row.get("label") is not None).most_common())


def _lengths(rows: list[dict], count_tokens: Callable[[dict], int] | None) -> dict:
    chars = [sum(len(m["content"]) for m in row["messages"]) if "messages" in row else len(row["text"]) for row in rows]
    lengths = {"chars": _stats(chars)}
    if count_tokens is not None:
        lengths["tokens"] = _stats([count_tokens(row) for row in rows])
    return lengths


def _stats(values: list[int]) -> dict | None:
    if not values:
        return None
    values = sorted(values)

    def percentile(p: float) -> int:  # nearest rank: always a length that occurs
        return values[max(math.ceil(p * len(values)) - 1, 0)]

    return {
        "min": values[0],
        "mean": round(sum(values) / len(values), 1),
        "p50": percentile(0.50),
        "p95": percentile(0.95),
        "max": values[-1],
    }


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            # default=str: rejected rows may hold values JSON lacks (Parquet dates, bytes).
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def _print_summary(console: Console, card: dict, out_dir: Path) -> None:
    totals, splits = card["totals"], card["splits"]
    lines = [f"Data: {totals['read']} rows read from {len(card['files'])} file(s), {totals['kept']} kept"]
    if totals["rejected"]:
        lines.append(f"  {totals['rejected']} rows rejected, see {out_dir / 'rejected.jsonl'}")
    if totals["removed"]:
        reasons = ", ".join(f"{kind} {n}" for kind, n in totals["removed_by_reason"].items())
        lines.append(f"  {totals['removed']} rows removed ({reasons}), see {out_dir / 'removed.jsonl'}")
    if totals["conflicting_duplicates"]:
        lines.append(f"  {totals['conflicting_duplicates']} prompts appear with different answers (kept)")
    lines.append("  " + " · ".join(f"{part} {n}" for part, n in splits.items()))
    for line in lines:
        console.print(line, markup=False, highlight=False)
