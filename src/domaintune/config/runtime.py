"""Runtime facts: what this machine can do, so the defaults fit it. One rule for the thread count and
one for bf16, used alike by training, evaluation, generation and serving."""
from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

from domaintune.config.recipe import Recipe
from domaintune.config.training import TrainingConfig


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_description() -> str:
    """The CPU's model name and the features that decide speed here, for every printed speed figure."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        name = platform.processor() or platform.machine()
    flags = cpu_flags()
    features = [label for label, present in (
        ("AVX-512", "avx512f" in flags), ("VNNI", bool(flags & {"avx512_vnni", "avx_vnni"})),
        ("native bf16", cpu_has_bf16()), ("AMX", bool(flags & {"amx_bf16", "amx_int8"})),
        ("AVX2", "avx2" in flags and "avx512f" not in flags)) if present]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core {name} ({', '.join(features) or 'no AVX2'}{'' if cpu_has_bf16() else ', no native bf16'})"


def cpu_has_bf16() -> bool:
    # Without native bf16 (AVX512-BF16 or AMX) autocast emulates it and runs slower than fp32.
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def use_bf16(recipe: Recipe) -> bool:
    """bf16 autocast for this recipe's run: the launcher's setting where one is given (the processes and
    the Trainer inside them must agree), else training.precision, where `auto` means native support."""
    import torch

    if recipe.distributed.mixed_precision is not None:
        return recipe.distributed.mixed_precision == "bf16"
    if recipe.training.precision != "auto":
        return recipe.training.precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def inference_device() -> str:
    """Where torch runs a model that is not being trained (evaluation, generation, serving): the GPU where
    there is one, since any CUDA device outruns these CPUs' engines; else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def thread_count(config: TrainingConfig) -> int:
    if config.threads != "auto":
        return int(config.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Processes launched together on this machine (torchrun sets LOCAL_WORLD_SIZE) share its cores.
    cores //= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    # Cores other programs keep busy are not ours: a torch thread waiting on a busy core stalls
    # every matmul (measured here: 2 threads on a loaded 2-core box ran 10x+ slower than 1).
    return max(1, cores - busy_cores())


def busy_cores(window: float = 0.3) -> int:
    """Cores other work keeps busy right now: CPU time spent while this process sleeps, from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    try:
        total_before, idle_before = sample()
        time.sleep(window)
        total_after, idle_after = sample()
    except (OSError, ValueError, IndexError):
        return 0
    elapsed = total_after - total_before
    if elapsed <= 0:
        return 0
    busy_share = 1 - (idle_after - idle_before) / elapsed
    return int(busy_share * (os.cpu_count() or 1) + 0.5)


def configure_threads(config: TrainingConfig) -> int:
    import torch

    threads = thread_count(config)
    torch.set_num_threads(threads)
    return threads
