"""CTranslate2, imported so that its native library calls its own OpenMP runtime.

The ctranslate2 wheel ships its own libgomp, and torch loads another one globally. Imported after torch,
CTranslate2's OpenMP calls bind to torch's runtime, which serves both libraries' thread teams. Once torch
has run a parallel region, that runtime holds more threads than the machine has cores, so it stops
spinning between regions. CTranslate2's many short regions then wait on the kernel instead.

Measured on a 2-core AMD EPYC, 8 rows × 80 tokens, float32, after a torch matmul: 10.3 s with the usual
import, 5.5 s with RTLD_DEEPBIND (the same as in a process without torch). In an evaluation, where torch
has just computed the losses, the base model's 110 quickstart answers took 102.7 s instead of 55.3 s.
RTLD_DEEPBIND makes the library look up symbols in its own dependencies first.

Its GEMM backend: oneDNN, not Intel MKL. CTranslate2 picks MKL by default on Intel CPUs (oneDNN on any
other), and on a 2-core Intel Xeon with AVX-512, VNNI and AMX, in a process without torch, MKL's float32
decoded 14.8 tok/s at batch 1 and 64.6 at batch 8, oneDNN's 35.5 and 123.8 (bench/README). So
CT2_USE_MKL defaults to 0 here; a CT2_USE_MKL the user sets is kept. AMD CPUs never used MKL.
"""
from __future__ import annotations

import importlib
import os
import sys


def ctranslate2():
    """The ctranslate2 module (imported on first use, with its own OpenMP runtime and oneDNN's GEMM)."""
    os.environ.setdefault("CT2_USE_MKL", "0")  # read once by the library, when it first picks a GEMM backend
    flags = sys.getdlopenflags()
    if "ctranslate2" not in sys.modules and hasattr(os, "RTLD_DEEPBIND"):
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        return importlib.import_module("ctranslate2")
    finally:
        sys.setdlopenflags(flags)


def mkl_enabled() -> bool:
    """Whether CTranslate2 may use Intel MKL: only where the user sets CT2_USE_MKL to a true value."""
    return os.environ.get("CT2_USE_MKL", "0").strip().lower() in ("1", "true", "on", "yes")
