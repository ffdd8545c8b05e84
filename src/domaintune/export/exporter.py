"""Export a run's model: the adapter as peft saved it, a merged safetensors folder, GGUF files."""
from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from domaintune.export.gguf import export_gguf, verify_gguf
from domaintune.models.conversions import converted_model
from domaintune.models.loading import adapter_files, is_adapter_folder, load_trained_model, merge_blocker
from domaintune.storage.jsonl import write_json
from domaintune.storage.rundir import RunDir


def export_causal_lm(run: RunDir, recipe, console: Console) -> dict[str, str]:
    """The default export: export/adapter as peft saved it (adapter methods) and export/merged; returns what
    was written."""
    import torch

    run.require_model()
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
        if config.gguf:
            written.update(_export_gguf(run, merged_dir, config.gguf, console))
        for compute_type in config.ctranslate2:
            target = run.export / f"ctranslate2-{compute_type}"
            shutil.rmtree(target, ignore_errors=True)
            # Through the cache: serving this export later finds it already converted.
            shutil.copytree(converted_model([merged_dir], compute_type, console=console), target)
            written[f"ctranslate2-{compute_type}"] = str(target)

    for kind, path in written.items():
        console.print(f"Exported {kind}: {path}")
    return written


def _copy_tokenizer(source: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(target))


def _export_gguf(run: RunDir, merged_dir: Path, kinds: list[str], console: Console) -> dict[str, str]:
    written = export_gguf(merged_dir, run.export / "gguf", kinds, run.recipe().name, console)
    files = {key.removeprefix("gguf-"): path for key, path in written.items() if key.startswith("gguf-")}
    report = verify_gguf(merged_dir, files, _probe_prompts(run))
    for kind, result in report.items():
        colour = "green" if result["same_greedy_output"] == result["prompts"] else "yellow"
        console.print(f"[{colour}]GGUF {kind}: greedy output loaded back with transformers equals the merged model's "
                      f"on {result['same_greedy_output']}/{result['prompts']} prompts", highlight=False)
    write_json(run.export / "gguf" / "verification.json", report)
    return written


def _probe_prompts(run: RunDir, count: int = 3) -> list[str]:
    """The first user turns of the test split (the task the model was tuned for), else generic prompts."""
    prompts = [user for row in run.read_split("test")
               if (user := next((m.get("content") for m in row.get("messages", []) if m.get("role") == "user"), None))]
    return prompts[:count] or ["Hello, who are you?", "Summarise what a loan agreement is."]
