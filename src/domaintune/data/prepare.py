"""The data pipeline: read (tables and documents) → convert → normalise → PII → length filter →
quality filters → exact dedup → near-dedup → split → leakage check → contamination check →
augmentation of the train split.

Nothing is dropped silently: rows that do not fit their format go to rejected.jsonl, rows
set aside later go to removed.jsonl, each with its file, line and reason, and data_card.json
counts all of it (read + augmented = rejected + removed + kept). data_report.html plots it.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Callable

from rich.console import Console

from domaintune.config import DataConfig
from domaintune.core.errors import DomaintuneError
from domaintune.data.augment import augment_rows
from domaintune.data.cleaning import Removed, char_length, count_conflicts, dedup_rows, filter_rows, normalise_row
from domaintune.data.contamination import check_contamination
from domaintune.data.data_report import funnel, write_data_report
from domaintune.data.documents import Tokenize, is_document, read_document_rows
from domaintune.data.formats import resolve_format, to_canonical
from domaintune.data.near_dedup import near_dedup_rows
from domaintune.data.pii import redact_rejected, scrub_rows
from domaintune.data.quality import quality_filter
from domaintune.data.readers import RawRow, read_files
from domaintune.data.row_errors import RowError, fix_hint, reason_kind
from domaintune.data.split import check_leakage, continued_in_train, split_rows
from domaintune.data.text_generator import Generate
from domaintune.storage.jsonl import write_jsonl

SPLITS = ("train", "validation", "test")
# A file is "mostly rejected for one reason" (said once, with a hint) from this share of its rows and this many.
MOSTLY_REJECTED_SHARE, MOSTLY_REJECTED_ROWS = 0.5, 5


def prepare_dataset(
    config: DataConfig,
    out_dir: Path,
    seed: int,
    count_tokens: Callable[[dict], int] | None = None,
    console: Console | None = None,
    tokenize: Tokenize | None = None,
    paraphraser: Callable[[], Generate] | None = None,
) -> dict:
    """Prepare the splits under `out_dir` and return the data card (also written as data_card.json).

    `tokenize` gives token offsets for chunking documents (default: whitespace words);
    `paraphraser` loads the model that `augment.methods: [paraphrase]` uses, only when needed."""
    if not config.train:
        raise DomaintuneError(
            "data.train is empty: list at least one data file (JSONL, JSON, CSV or Parquet), document or folder"
        )
    console = console or Console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count_tokens = _remembered(count_tokens)

    files, parts, rejected, skipped = _read_parts(config, tokenize)
    for item in skipped:
        console.print(f"  skipped {item['file']}: {item['reason']}", markup=False, highlight=False)
    read = sum(file["rows"] for file in files)
    stages = [{"stage": "read", "rows": read}, {"stage": "rejected", "removed": len(rejected)}]
    removed, counts, pii_found, near_pairs = _clean_parts(parts, config, count_tokens, stages)
    mostly_rejected = _mostly_rejected(files, rejected)
    if not any(parts.values()):
        _write_set_aside(out_dir, rejected, removed, config)  # so the user can see why
        raise DomaintuneError(
            f"no usable rows: {read} read, {len(rejected)} rejected (see {out_dir / 'rejected.jsonl'}), "
            f"{len(removed)} removed (see {out_dir / 'removed.jsonl'}), {len(skipped)} documents skipped"
            + "".join(f"\n{_mostly_rejected_text(item)}" for item in mostly_rejected)
        )

    # Explicit validation/test files replace that share of the split.
    explicit = {part: 0.0 for part in ("validation", "test") if getattr(config, part)}
    train, validation, test = split_rows(parts["train"], config.split.model_copy(update=explicit), seed)
    if not train:
        _write_set_aside(out_dir, rejected, removed, config)
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
    stages.append({"stage": "prompt also in train", "removed": counts["leaked"]})
    contamination = _check_contamination(splits, config)
    augmented, augment_counts = augment_rows(splits["train"], config.augment, seed, paraphraser)
    splits["train"] += augmented
    counts["augmented"] = len(augmented)
    stages.append({"stage": "augmented", "added": len(augmented)})

    _write_set_aside(out_dir, rejected, removed, config)
    for part, rows in splits.items():
        write_jsonl(out_dir / f"{part}.jsonl", rows)
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
        "stages": stages,
        "rejected_reasons": dict(Counter(record["reason"] for record in rejected).most_common()),
        "splits": {part: len(rows) for part, rows in splits.items()},
        "pii": {"mode": config.pii.mode, "found": pii_found},
        "near_duplicates": {"threshold": config.near_dedup.threshold, "examples": near_pairs[:5]},
    }
    if mostly_rejected:
        card["mostly_rejected"] = mostly_rejected
    if skipped or any(file["format"] == "document" for file in files):
        card["documents_skipped"] = skipped
    if contamination is not None:
        card["contamination"] = contamination
    if augment_counts:
        card["augmentation"] = augment_counts
    if any(row.get("label") is not None for rows in splits.values() for row in rows):
        card["labels"] = {part: _label_counts(rows) for part, rows in splits.items()}
    card["lengths"] = {part: _lengths(rows, count_tokens) for part, rows in splits.items()}
    (out_dir / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_data_report(out_dir, card, splits, count_tokens)
    _print_summary(console, card, out_dir)
    if contamination and config.contamination.action == "fail" and any(c["contaminated"] for c in contamination.values()):
        raise DomaintuneError(f"evaluation data overlaps the train split: {_contamination_text(contamination)} "
                              f"(data.contamination.action is 'fail'; see {out_dir / 'data_card.json'})")
    return card


def _read_parts(
    config: DataConfig, tokenize: Tokenize | None
) -> tuple[list[dict], dict[str, list[dict]], list[dict], list[dict]]:
    """Per-file card entries, canonical rows per part (train/validation/test files), rejected records,
    documents skipped with their reason."""
    files: list[dict] = []
    parts: dict[str, list[dict]] = {part: [] for part in SPLITS}
    rejected: list[dict] = []
    skipped: list[dict] = []
    for part in SPLITS:
        patterns = getattr(config, part)
        for path, raw_rows in read_files([p for p in patterns if not is_document(p)]):
            rows, fmt, bad = read_table(path, raw_rows, config)
            files.append({"file": str(path), "part": part, "format": fmt, "rows": len(raw_rows), "rejected": len(bad)})
            parts[part] += rows
            rejected += bad
        documents = [p for p in patterns if is_document(p)]
        if documents:
            rows, skipped_here = read_document_rows(
                documents, config.documents.chunk_tokens, config.documents.overlap, tokenize,
                config.documents.max_member_mb,
            )
            for file, chunks in Counter(row["source"]["file"] for row in rows).items():
                files.append({"file": file, "part": part, "format": "document", "rows": chunks, "rejected": 0})
            parts[part] += rows
            skipped += skipped_here
    return files, parts, rejected, skipped


def read_table(path: Path, raw_rows: list[RawRow], config: DataConfig) -> tuple[list[dict], str, list[dict]]:
    """A data file's canonical rows (with their source), its format, and its rejected records."""
    fmt = resolve_format(path, raw_rows, config)
    rows, bad = _convert(raw_rows, fmt, config)
    return rows, fmt, bad


def _clean_parts(
    parts: dict[str, list[dict]],
    config: DataConfig,
    count_tokens: Callable[[dict], int] | None,
    stages: list[dict],
) -> tuple[list[Removed], dict[str, int], dict[str, int], list[dict]]:
    """Normalise, scrub, filter and dedup each part in place; append each stage's removals to `stages`.
    Returns what was set aside, the counts, PII found per type, and near-duplicate example pairs."""
    # Each part is cleaned on its own: an eval row repeating a train row is leakage, handled after the split.
    # PII goes first so the filters, dedup and the card see what will be trained on.
    removed: list[Removed] = []
    counts = {"duplicates": 0, "near_duplicates": 0, "conflicting_duplicates": 0}
    by_stage: Counter = Counter()
    pii_found: Counter = Counter()
    near_pairs: list[dict] = []
    for part, rows in parts.items():
        rows = [normalise_row(row) for row in rows]
        if config.pii.mode != "off":
            rows, dropped, found = scrub_rows(rows, config.pii)
            pii_found.update(found)
            by_stage["pii"] += len(dropped)
            removed += dropped
        rows, dropped = filter_rows(rows, config.min_chars, config.max_tokens, count_tokens)
        by_stage["length"] += len(dropped)
        removed += dropped
        rows, dropped = quality_filter(rows, config.quality)
        by_stage["quality"] += len(dropped)
        removed += dropped
        unique, repeated = dedup_rows(rows)
        counts["duplicates"] += len(repeated)
        if config.dedup:
            rows = unique
            removed += repeated
            by_stage["duplicate"] += len(repeated)
        if config.dedup and config.near_dedup.enabled:  # dedup: false keeps every copy, near ones too
            rows, similar, pairs = near_dedup_rows(rows, config.near_dedup)
            counts["near_duplicates"] += len(similar)
            by_stage["near-duplicate"] += len(similar)
            removed += similar
            near_pairs += pairs
        counts["conflicting_duplicates"] += count_conflicts(rows)
        parts[part] = rows
    stages += [{"stage": stage, "removed": by_stage[stage]} for stage in ("pii", "length", "quality", "duplicate", "near-duplicate")]
    return removed, counts, dict(pii_found.most_common()), near_pairs


def _check_contamination(splits: dict[str, list[dict]], config: DataConfig) -> dict | None:
    """n-gram overlap of the validation and test splits and each benchmark file with train."""
    if config.contamination.action == "off":
        return None
    eval_sets = {"validation": splits["validation"], "test": splits["test"]}
    for path, raw_rows in read_files(config.contamination.benchmarks):
        eval_sets[str(path)] = [normalise_row(row) for row in read_table(path, raw_rows, config)[0]]
    return check_contamination(splits["train"], eval_sets, config.contamination)


def _contamination_text(contamination: dict) -> str:
    return ", ".join(f"{name} {c['contaminated']}/{c['rows']}"
                     + (f" ({c['other_answer']} answered otherwise in train)" if c.get("other_answer") else "")
                     for name, c in contamination.items() if c["contaminated"])


def _remove_leaks(splits: dict[str, list[dict]], removed: list[Removed]) -> int:
    """Drop eval rows whose prompt is also in train (explicit files can repeat one), or whose conversation a train
    row continues; return how many."""
    leaked = 0
    for part in ("validation", "test"):
        reasons = {id(row): "prompt also in train" for row in check_leakage(splits["train"], splits[part])}
        reasons.update({id(row): "prompt also in train: a train row continues this conversation"
                        for row in continued_in_train(splits["train"], splits[part]) if id(row) not in reasons})
        removed += [Removed(row, "prompt also in train", reasons[id(row)]) for row in splits[part] if id(row) in reasons]
        splits[part] = [row for row in splits[part] if id(row) not in reasons]
        leaked += len(reasons)
    return leaked


def _mostly_rejected(files: list[dict], rejected: list[dict]) -> list[dict]:
    """Files most of whose rows were rejected for one reason: the reason once (its first row and how many
    share it) and how to fix it, instead of the same line a hundred times."""
    found = []
    for file in files:
        records = [record for record in rejected if record["file"] == file["file"]]
        kinds = Counter(reason_kind(record["reason"]) for record in records)
        if not kinds:
            continue
        kind, count = kinds.most_common(1)[0]
        if count >= MOSTLY_REJECTED_ROWS and count >= MOSTLY_REJECTED_SHARE * file["rows"]:
            first = next(record for record in records if reason_kind(record["reason"]) == kind)
            found.append({"file": file["file"], "rows": file["rows"], "rejected": count, "reason": first["reason"],
                          "line": first["line"], "hint": fix_hint(first["reason"])})
    return found


def _mostly_rejected_text(item: dict) -> str:
    text = (f"{item['file']}: {item['rejected']} of {item['rows']} rows rejected for one reason: {item['reason']} "
            f"(line {item['line']}, and {item['rejected'] - 1} more like it)")
    return text + (f"; hint: {item['hint']}" if item["hint"] else "")


def _convert(raw_rows: list[RawRow], fmt: str, config: DataConfig) -> tuple[list[dict], list[dict]]:
    """Canonical rows (with their source) and rejected records."""
    rows, rejected = [], []
    for raw in raw_rows:
        source = {"file": raw.file, "line": raw.line} if raw.item is None else {"file": raw.file, "line": raw.line, "item": raw.item}
        if raw.data is None:
            rejected.append({**source, "reason": raw.error, "row": raw.raw})
            continue
        try:
            row = to_canonical(raw.data, fmt, config)
        except RowError as error:
            rejected.append({**source, "reason": error.reason, "row": raw.data})
            continue
        row["source"] = source
        rows.append(row)
    return rows, rejected


def _remembered(count_tokens: Callable[[dict], int] | None) -> Callable[[dict], int] | None:
    """Tokenise each row once: the length filter and the card's statistics both need the count."""
    if count_tokens is None:
        return None
    counts: dict[str, int] = {}

    def count(row: dict) -> int:
        # Keyed by all that is tokenised (tool calls and definitions too), not by where the row came from: a
        # source can be shared (a file listed twice) and two equal rows have one length anyway.
        key = json.dumps([row.get("messages", row.get("text")), row.get("tools")], sort_keys=True, default=str)
        if key not in counts:
            counts[key] = count_tokens(row)
        return counts[key]

    return count


def _write_set_aside(out_dir: Path, rejected: list[dict], removed: list[Removed], config: DataConfig) -> None:
    write_jsonl(out_dir / "rejected.jsonl", redact_rejected(rejected, config.pii))
    write_jsonl(out_dir / "removed.jsonl", [_removed_record(item) for item in removed])


def _removed_record(item: Removed) -> dict:
    row = {key: value for key, value in item.row.items() if key != "source"}
    return {**item.row["source"], "reason": item.reason, "row": row}


def _label_counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(row["label"] for row in rows if row.get("label") is not None).most_common())


def _lengths(rows: list[dict], count_tokens: Callable[[dict], int] | None) -> dict:
    lengths = {"chars": _stats([char_length(row) for row in rows])}
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


def _print_summary(console: Console, card: dict, out_dir: Path) -> None:
    totals, splits = card["totals"], card["splits"]
    lines = [f"Data: {totals['read']} rows read from {len(card['files'])} file(s), {totals['kept']} kept"]
    for stage in funnel(card):
        lines.append(f"  {stage['stage']:<22}{stage['change']:>7}  -> {stage['after']}")
    if totals["rejected"]:
        lines.append(f"  {totals['rejected']} rows rejected, see {out_dir / 'rejected.jsonl'}")
        lines += [f"  warning: {_mostly_rejected_text(item)}" for item in card.get("mostly_rejected", [])]
    if totals["removed"]:
        reasons = ", ".join(f"{kind} {n}" for kind, n in totals["removed_by_reason"].items())
        lines.append(f"  {totals['removed']} rows removed ({reasons}), see {out_dir / 'removed.jsonl'}")
    if card["pii"]["found"]:
        found = ", ".join(f"{kind} {n}" for kind, n in card["pii"]["found"].items())
        lines.append(f"  PII found ({card['pii']['mode']}): {found}")
    if totals["conflicting_duplicates"]:
        lines.append(f"  {totals['conflicting_duplicates']} prompts appear with different answers (kept)")
    if any(c["contaminated"] for c in card.get("contamination", {}).values()):
        lines.append(f"  warning: evaluation rows overlap train: {_contamination_text(card['contamination'])}")
    lines.append("  " + " · ".join(f"{part} {n}" for part, n in splits.items()))
    lines.append(f"  report: {out_dir / 'data_report.html'}")
    for line in lines:
        console.print(line, markup=False, highlight=False)
