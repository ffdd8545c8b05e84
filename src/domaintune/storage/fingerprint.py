"""What a run was made from, kept in <run>/fingerprint.json so that `--resume` continues only a run of
the same recipe and data: a hash of the resolved recipe, of the prepared splits (data/), and of each
data file or folder the recipe names."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from domaintune.config import Recipe

# Distributed settings `train --processes/--machine-rank` may change for one launch of the same run.
LAUNCH_ONLY = ("processes", "machine_rank")
SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl")


def recipe_values(recipe: Recipe) -> dict:
    values = recipe.model_dump(mode="json")
    for key in LAUNCH_ONLY:
        values["distributed"].pop(key, None)
    return values


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(recipe_values(recipe), sort_keys=True).encode("utf-8")).hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def files_hash(files: list[Path], root: Path) -> str:
    """One hash of the files' contents and their names relative to `root`."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_hash(path)}\n".encode("utf-8"))
    return digest.hexdigest()


def data_hash(data_dir: Path) -> str:
    """The prepared splits training reads (a multitask run's per-task folders too), nothing written beside them later."""
    return files_hash([path for name in SPLIT_FILES for path in data_dir.rglob(name) if path.is_file()], data_dir)


def source_hashes(recipe: Recipe) -> dict[str, str | None]:
    """Each data file or folder of data.train/validation/test by content; None for a name that is not
    on this disk (a hub dataset)."""
    hashes: dict[str, str | None] = {}
    for name in [*recipe.data.train, *recipe.data.validation, *recipe.data.test]:
        path = Path(name).expanduser()
        if path.is_file():
            hashes[name] = file_hash(path)
        elif path.is_dir():
            hashes[name] = files_hash([item for item in path.rglob("*") if item.is_file()], path)
        else:
            hashes[name] = None
    return hashes


def fingerprint(recipe: Recipe, data_dir: Path) -> dict:
    return {"recipe": recipe_hash(recipe), "data": data_hash(data_dir), "sources": source_hashes(recipe)}


def changed_fields(old, new, prefix: str = "") -> list[str]:
    """Dotted names of the values that differ, as `training.lr (0.02 -> 0.5)`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(old.keys() | new.keys(), key=str)
                for change in changed_fields(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))]
    if old == new:
        return []
    shown = [json.dumps(value)[:40] for value in (old, new)]
    return [f"{prefix} ({shown[0]} -> {shown[1]})"]


def differences(stored: dict, stored_recipe: Recipe, recipe: Recipe, data_dir: Path) -> list[str]:
    """What differs between the run's fingerprint (and recipe.yaml) and `recipe` with today's files, one line each."""
    found = []
    if recipe_hash(recipe) != stored.get("recipe"):
        fields = changed_fields(recipe_values(stored_recipe), recipe_values(recipe))
        found.append("recipe fields changed: " + ", ".join(fields) if fields
                     else "the run's recipe.yaml was edited after the run was prepared")
    if stored.get("data") != data_hash(data_dir):
        found.append(f"data changed: the prepared splits in {data_dir} were modified after preparation")
    # A file added to or removed from the recipe's lists shows as a changed recipe field above.
    sources, now = stored.get("sources", {}), source_hashes(recipe)
    edited = sorted(name for name in sources.keys() & now.keys() if sources[name] != now[name])
    if edited:
        found.append(f"data changed since the run was prepared: {', '.join(edited)}")
    return found
