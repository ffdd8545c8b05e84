"""What this machine can do, so the defaults fit it: thread count and bf16 support."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from domaintune.config import TrainingConfig


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


def cpu_has_bf16() -> bool:
    # Without native bf16 (AVX512-BF16 or AMX) autocast emulates it and runs slower than fp32.
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def use_bf16(config: TrainingConfig) -> bool:
    import torch

    if config.precision != "auto":
        return config.precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def thread_count(config: TrainingConfig) -> int:
    if config.threads != "auto":
        return int(config.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Processes launched together on this machine (torchrun sets LOCAL_WORLD_SIZE) share its cores.
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def configure_threads(config: TrainingConfig) -> int:
    import torch

    threads = thread_count(config)
    torch.set_num_threads(threads)
    return threads
