"""Export a run's model: the adapter as peft saved it, and a merged safetensors folder."""
from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from domaintune.models.loading import PEFT_ADAPTER_FILES, adapter_files, is_adapter_folder, load_trained_model, merge_blocker
from domaintune.objectives import hook
from domaintune.rundir import RunDir

ADAPTER_FILES = PEFT_ADAPTER_FILES


def export_run(run: RunDir, console: Console | None = None) -> dict[str, str]:
    """Writes export/adapter (adapter methods) and export/merged; returns what was written."""
    console = console or Console(stderr=True)
    run.require_model()
    recipe = run.recipe()
    own_export = hook(recipe.objective, "export")
    if own_export:  # a classifier or an embedding model: its own artifact layout
        return own_export(run, console=console)
    return export_causal_lm(run, recipe, console)


def export_causal_lm(run: RunDir, recipe, console: Console) -> dict[str, str]:
    """The default export: the adapter as peft saved it, and the merged causal LM."""
    import torch

    config = recipe.export
    written: dict[str, str] = {}

    if config.adapter and is_adapter_folder(run.model):
        adapter_dir = run.export / "adapter"
        adapter_dir.mkdir(parents=True, exist_ok=True)
        for name in adapter_files(run.model):
            shutil.copy2(run.model / name, adapter_dir / name)
        written["adapter"] = str(adapter_dir)

    blocker = merge_blocker(run.model) if config.merged else None
    if blocker:
        # Not an error: the adapter is the artifact for these methods.
        where = f"the adapter in {written['adapter']} is" if "adapter" in written else "set export.adapter: true for"
        console.print(
            f"[yellow]No merged model written: {blocker}, so it can't be folded into the weights; "
            f"{where} the exported model (load it on top of the base model).",
            highlight=False,
        )
    elif config.merged:
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
