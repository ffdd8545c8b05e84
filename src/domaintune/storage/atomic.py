"""Folders written whole or not at all: filled under a staging name, flushed to disk, then renamed into
place, so a process killed mid-write leaves the previous folder (or none), never a partial one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def staging_folder(target: Path) -> Path:
    """Where `target` is written before commit_folder; beside it, so the rename stays on one file system."""
    return target.parent / f".{target.name}.partial"


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def commit_folder(staging: Path, target: Path) -> None:
    """Flush every file of `staging` to disk, then rename it to `target` (an existing `target` is
    replaced: moved aside first, removed after)."""
    for path in [*staging.rglob("*"), staging]:
        _fsync(path)  # files and folders alike: a folder's entries must be on disk before the rename
    replaced = target.parent / f".{target.name}.replaced"
    if target.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(target, replaced)
    os.replace(staging, target)
    _fsync(target.parent)
    shutil.rmtree(replaced, ignore_errors=True)
