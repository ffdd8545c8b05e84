"""Export a run's model: the adapter as peft saved it, a merged safetensors folder, GGUF files."""
from __future__ import annotations

import json
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
        if config.gguf:
            written.update(_export_gguf(run, merged_dir, config.gguf, console))

    for kind, path in written.items():
        console.print(f"Exported {kind}: {path}")
    return written


def _copy_tokenizer(source: Path, target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(target))


def _export_gguf(run: RunDir, merged_dir: Path, kinds: list[str], console: Console) -> dict[str, str]:
    from domaintune.export.gguf import export_gguf, verify_gguf

    written = export_gguf(merged_dir, run.export / "gguf", kinds, run.recipe().name, console)
    files = {key.removeprefix("gguf-"): path for key, path in written.items() if key.startswith("gguf-")}
    report = verify_gguf(merged_dir, files, _probe_prompts(run))
    for kind, result in report.items():
        colour = "green" if result["same_greedy_output"] == result["prompts"] else "yellow"
        console.print(f"[{colour}]GGUF {kind}: greedy output loaded back with transformers equals the merged model's "
                      f"on {result['same_greedy_output']}/{result['prompts']} prompts", highlight=False)
    (run.export / "gguf" / "verification.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return written


def _probe_prompts(run: RunDir, count: int = 3) -> list[str]:
    """The first user turns of the test split (the task the model was tuned for), else generic prompts."""
    prompts = []
    test = run.data / "test.jsonl"
    for line in test.read_text(encoding="utf-8").splitlines() if test.exists() else []:
        user = next((m.get("content") for m in json.loads(line).get("messages", []) if m.get("role") == "user"), None)
        if user:
            prompts.append(user)
        if len(prompts) == count:
            return prompts
    return prompts or ["Hello, who are you?", "Summarise what a loan agreement is."]
