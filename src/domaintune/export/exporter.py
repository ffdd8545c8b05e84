"""Export a run's model: the adapter as peft saved it, and a merged safetensors folder."""
from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from domaintune.models.loading import is_adapter_folder, load_trained_model
from domaintune.rundir import RunDir

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def export_run(run: RunDir, console: Console | None = None) -> dict[str, str]:
    """Writes export/adapter (adapter methods) and export/merged; returns what was written."""
    import torch

    console = console or Console(stderr=True)
    run.require_model()
    recipe = run.recipe()
    config = recipe.export
    written: dict[str, str] = {}

    if config.adapter and is_adapter_folder(run.model):
        adapter_dir = run.export / "adapter"
        adapter_dir.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(run.model / name, adapter_dir / name)
        written["adapter"] = str(adapter_dir)

    if config.merged:
        merged_dir = run.export / "merged"
        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        model = load_trained_model(recipe.model, run.model, merge=True)
        model = model.to(dtype)
        model.config.use_cache = True  # training switched it off; inference wants it
        model.save_pretrained(str(merged_dir), safe_serialization=True)
        _copy_tokenizer(run.model, merged_dir)
        written["merged"] = str(merged_dir)

    for kind, path in written.items():
        console.print(f"Exported {kind}: {path}")
    return written


def _copy_tokenizer(source: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(target))
