"""Models converted for an inference engine (CTranslate2, OpenVINO), cached: one per (weights, precision, converter
version), keyed by a digest of the files that make the model, the least recently used evicted beyond a size budget."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

from rich.console import Console

from domaintune.core.errors import DomaintuneError
from domaintune.models.ctranslate2_library import ctranslate2
from domaintune.models.registry import cache_dir, publish_folder

# Every evaluated run adds a conversion of its tuned model (~0.5 GB for the bundled one in float32): the cache keeps
# the most recently used up to this size (DOMAINTUNE_CONVERSIONS_GB), and never one used within RECENT_USE_SECONDS
# (another process may be about to load it).
CONVERSIONS_GB = 8.0
RECENT_USE_SECONDS = 3600


def weights_digest(folders: list[Path | str], extra: str) -> str:
    """A digest of the files that make the model: configs, tokenizer and weights of every folder (a hub
    model not in a local folder by its id and revision)."""
    digest = hashlib.blake2b(extra.encode(), digest_size=16)
    for folder in folders:
        if not isinstance(folder, Path):
            digest.update(folder.encode())
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            stat = path.stat()
            digest.update(path.name.encode() + _file_digest(str(path), stat.st_size, stat.st_mtime_ns))
    return digest.hexdigest()


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, modified_ns: int) -> bytes:
    """One file's digest; an evaluation asks for the base model's twice (base, then under the adapter),
    so it is read once per process while its size and time stay the same."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.digest()


def converted_model(folders: list[Path | str], compute_type: str, write_merged: Callable[[Path], None] | None = None,
                    console: Console | None = None) -> Path:
    """The CTranslate2 model for these weights at this compute type, converted once and cached (cached_conversion)."""
    library = ctranslate2()

    def convert(source: Path, target: Path) -> None:
        converter = library.converters.TransformersConverter(str(source), low_cpu_mem_usage=True)
        converter.convert(str(target), quantization=compute_type, force=True)

    return cached_conversion("ctranslate2", folders, compute_type, f"{compute_type} {library.__version__}", convert,
                             "model.bin", write_merged, console)


def cached_conversion(engine: str, folders: list[Path | str], variant: str, key_extra: str,
                      convert: Callable[[Path, Path], None], marker: str,
                      write_merged: Callable[[Path], None] | None = None, console: Console | None = None) -> Path:
    """The folder of these weights converted for `engine` (`variant`: its precision), converted once and cached.

    `folders` are what make the model (the base folder, plus the adapter folder for an adapter run);
    `write_merged(folder)` saves the merged model in Hugging Face format where `folders` is not already
    one plain model folder; `convert(source, target)` writes the converted folder, whose file `marker`
    says it is complete. A conversion is written aside and renamed into place, so a crash never
    leaves a half-written model that a later run would load.
    """
    key = weights_digest(folders, key_extra)
    target = cache_dir() / engine / f"{key}-{variant}"
    if (target / marker).exists():
        os.utime(target)  # its last use: the cache evicts the least recently used
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        source = folders[0]
        if write_merged is not None:
            source = work / "merged"
            write_merged(source)
        if console is not None:
            console.print(f"Converting the model for {engine} ({variant}), once: {target}")
        convert(Path(source), work / "model")
        publish_folder(work / "model", target, marker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.utime(target)
    budget = conversions_budget()
    evicted = evict_conversions(target.parent, budget)
    if evicted and console is not None:
        console.print(f"Removed {len(evicted)} least recently used conversion(s) from the cache "
                      f"(DOMAINTUNE_CONVERSIONS_GB={budget / 2**30:g})")
    return target


def conversions_budget() -> int:
    """Bytes the converted models may take in the cache."""
    setting = os.environ.get("DOMAINTUNE_CONVERSIONS_GB", "")
    try:
        gigabytes = float(setting) if setting else CONVERSIONS_GB
    except ValueError:
        raise DomaintuneError(f"DOMAINTUNE_CONVERSIONS_GB={setting!r}: expected a number of gigabytes") from None
    return int(gigabytes * 2**30)


LEASE_PREFIX = ".in-use-"


def hold_conversion(folder: Path) -> Path:
    """Keep a conversion out of eviction for as long as this process lives: a server loads its adapters'
    conversions again after unloading them, maybe hours after it started. A lease file named by process id."""
    (folder / f"{LEASE_PREFIX}{os.getpid()}").touch()
    return folder


def _held(conversion: Path) -> bool:
    """Whether a living process holds the conversion; the leases of ended processes are removed."""
    held = False
    for lease in conversion.glob(f"{LEASE_PREFIX}*"):
        try:
            os.kill(int(lease.name.removeprefix(LEASE_PREFIX)), 0)
            held = True
        except PermissionError:  # alive, another user's
            held = True
        except (ProcessLookupError, ValueError):
            lease.unlink(missing_ok=True)
    return held


def evict_conversions(folder: Path, budget: int, now: float | None = None) -> list[Path]:
    """Delete the least recently used conversions in `folder` until the rest fit in `budget` bytes, sparing any
    used within RECENT_USE_SECONDS or held by a running server (`hold_conversion`); returns what was deleted."""
    now = time.time() if now is None else now
    last_used = {entry: entry.stat().st_mtime for entry in folder.iterdir()
                 if entry.is_dir() and not entry.name.startswith(".")}  # ".converting-*": work in progress
    sizes = {entry: sum(file.stat().st_size for file in entry.rglob("*") if file.is_file()) for entry in last_used}
    total = sum(sizes.values())
    evicted = []
    for entry in sorted(last_used, key=last_used.get):
        if total <= budget:
            break
        if now - last_used[entry] < RECENT_USE_SECONDS or _held(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
        evicted.append(entry)
    return evicted
