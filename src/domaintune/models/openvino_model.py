"""OpenVINO GenAI, the server's continuous-batching CPU engine (serving/openvino_engine.py): the model as a GGUF
file converted once into the cache (the pipelines that run it: models/openvino_pipelines.py).

Why GGUF: OpenVINO GenAI reads GGUF files itself, and llama.cpp's converter is already installed for
`export.gguf` (models/gguf_converter.py). Its own converter (optimum-intel) pins an older transformers than
domaintune's. Its GGUF reader takes f16 and q8_0 weights (not f32), computed here in float32.

Measured on a 2-core Intel Xeon with AVX-512, VNNI and AMX (bench/README, "OpenVINO"), SmolLM2-135M,
greedy, 128 new tokens, generated tok/s at batch 1 / 8 / 16: q8_0 62 / 301 / 458, f16 25 / 136 / 240,
against CTranslate2 float32's 36 / 106 / 153. Greedy answers on 40 chat prompts: f16 all 40 as torch
fp32's, q8_0 16 of 40 (int8 weights move a small model's answers, as CTranslate2's int8 did).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from rich.console import Console

from domaintune.config.runtime import cpu_flags
from domaintune.core.errors import DomaintuneError
from domaintune.models.conversions import cached_conversion
from domaintune.models.generation import INT8_FLAGS
from domaintune.models.gguf_converter import convert

# compute type -> GGUF weights. OpenVINO's GGUF reader has no f32.
GGUF_TYPES = {"int8": "q8_0", "float16": "f16"}


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino_genai") is not None


def openvino_compute_type(setting: str) -> str:
    """The weights' precision: `setting`, or under `auto` int8 where the CPU has VNNI or AVX-512 (int8 weights
    pay there), else float16."""
    if setting == "auto":
        return "int8" if cpu_flags() & INT8_FLAGS else "float16"
    if setting not in GGUF_TYPES:
        raise DomaintuneError(f"--compute-type {setting}: the OpenVINO engine takes auto, "
                              f"{', '.join(GGUF_TYPES)}")
    return setting


def openvino_gguf(folders: list[Path | str], compute_type: str, write_merged: Callable[[Path], None] | None = None,
                  console: Console | None = None) -> Path:
    """The model's GGUF file at this compute type, converted once and cached. Raises where OpenVINO is not
    installed, or the converter is missing or can't take the model."""
    if not openvino_installed():
        raise DomaintuneError("openvino-genai is not installed")
    outtype = GGUF_TYPES[compute_type]

    def write(source: Path, target: Path) -> None:
        target.mkdir()
        convert(source, target / "model.gguf", outtype, what="OpenVINO engine")

    folder = cached_conversion("openvino", folders, compute_type, f"gguf {outtype}", write, "model.gguf",
                               write_merged, console)
    return folder / "model.gguf"
