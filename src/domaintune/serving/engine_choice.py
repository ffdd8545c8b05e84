"""Which engine answers the server's causal LM (`serve --engine`):

- `openvino`: OpenVINO GenAI's continuous batching (openvino_engine.py) on the model converted to GGUF;
- `ctranslate2`: CTranslate2 alone (ctranslate2_engine.py);
- `torch`: transformers on torch with the server's own continuous batching (engine.py);
- `auto`: torch on a GPU, where there is one. On a CPU: OpenVINO where it is installed, the compute type
  is one it runs (auto, int8, float16) and it loads the model and every adapter; else CTranslate2 for a
  request into an idle server and torch for concurrent ones (load_router.py); else torch.

An engine named that can't load the model gives torch, with a one-line notice that says why.
Measured side by side with bench/serve_throughput.py (bench/README, "serve_throughput.py").
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from domaintune.config import ModelConfig
from domaintune.config.inference import InferenceConfig
from domaintune.config.runtime import inference_device
from domaintune.models.conversions import hold_conversion
from domaintune.models.generation import (
    CTranslate2Generator,
    EngineUnavailable,
    converted_for_engine,
    ctranslate2_folder,
    model_loader,
    torch_notice,
    weights_folders,
)
from domaintune.models.loading import load_tokenizer
from domaintune.models.openvino_model import GGUF_TYPES, openvino_compute_type, openvino_gguf, openvino_installed
from domaintune.serving.batching import BatchingWorker, context_length, end_token_ids
from domaintune.serving.ctranslate2_engine import CTranslate2Engine
from domaintune.serving.engine import Generator
from domaintune.serving.load_router import LoadRouter
from domaintune.serving.openvino_engine import OpenVINOEngine
from domaintune.serving.settings import ServeSettings


def text_engine(served_chat: tuple[str, str], adapters: dict[str, str], settings: ServeSettings, metrics=None,
                console: Console | None = None) -> BatchingWorker | LoadRouter:
    """The server's causal LM on the engine `settings.engine` names (module docstring)."""
    name, path = served_chat
    batching = {"max_loaded_adapters": settings.max_loaded_adapters, "max_batch_size": settings.max_batch_size,
                "batch_wait_ms": settings.batch_wait_ms, "metrics": metrics}
    torch_engine = lambda: Generator(name, path, adapters, dtype=settings.dtype,  # noqa: E731
                                     trust_remote_code=settings.trust_remote_code, **batching)
    if settings.engine == "torch" or (settings.engine == "auto" and inference_device() == "cuda"):
        return torch_engine()
    model = _ModelFacts(path, settings.trust_remote_code)
    if settings.engine == "openvino" or (settings.engine == "auto" and openvino_installed()
                                         and settings.compute_type in ("auto", *GGUF_TYPES)):
        try:
            return _openvino_engine(name, model, adapters, settings, batching, console)
        except EngineUnavailable as error:
            if settings.engine == "openvino":
                torch_notice(console, error, "OpenVINO")
                return torch_engine()
            if console is not None:
                console.print(f"[yellow]OpenVINO can't load this model ({error}): CTranslate2 and torch instead.[/yellow]")
    try:
        engine = _ctranslate2_engine(name, model, adapters, settings, batching, console)
    except EngineUnavailable as error:
        torch_notice(console, error)
        return torch_engine()
    return engine if settings.engine == "ctranslate2" else LoadRouter(engine, torch_engine())


class _ModelFacts:
    """What every engine needs to know of the served model: its tokenizer, end tokens and context length."""

    def __init__(self, path: str, trust_remote_code: bool):
        from transformers import AutoConfig, GenerationConfig

        self.config = ModelConfig(name=path, trust_remote_code=trust_remote_code)
        self.tokenizer = load_tokenizer(self.config)
        try:
            generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # a folder without generation_config.json
            generation_config = None
        self.end_ids = end_token_ids(generation_config, self.tokenizer)
        self.context = context_length(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
                                      self.tokenizer)

    def sources(self, adapter: str | None):
        """(how to load the model, the folders its weights come from) for the base model or an adapter."""
        model_dir = Path(adapter) if adapter else None
        return model_loader(self.config, model_dir), weights_folders(self.config, model_dir)


def _openvino_engine(name: str, model: _ModelFacts, adapters: dict[str, str], settings: ServeSettings, batching: dict,
                     console: Console | None) -> OpenVINOEngine:
    import torch

    compute_type = openvino_compute_type(settings.compute_type)

    def convert(adapter: str | None) -> Path:
        load, folders = model.sources(adapter)
        gguf = converted_for_engine(lambda write_merged: openvino_gguf(folders, compute_type, write_merged, console),
                                    load, model.tokenizer, folders)
        hold_conversion(gguf.parent)  # an adapter unloaded now is loaded again from it later
        return gguf

    # Every model is converted now (once: the cache keeps them), so no request waits for a conversion.
    files = {name: convert(None), **{adapter: convert(folder) for adapter, folder in adapters.items()}}
    try:
        return OpenVINOEngine(name, files, model.tokenizer, model.end_ids, model.context, compute_type,
                              torch.get_num_threads(), **batching)
    except RuntimeError as error:  # OpenVINO can't read or compile the file
        raise EngineUnavailable(str(error).strip().splitlines()[-1]) from None


def _ctranslate2_engine(name: str, model: _ModelFacts, adapters: dict[str, str], settings: ServeSettings,
                        batching: dict, console: Console | None) -> CTranslate2Engine:
    import torch

    setting = InferenceConfig(engine="ctranslate2", compute_type=settings.compute_type)

    def convert(adapter: str | None) -> tuple[Path, str]:
        load, folders = model.sources(adapter)
        folder, compute_type = ctranslate2_folder(load, model.tokenizer, setting, folders=folders, exact=False,
                                                  console=console)
        return hold_conversion(folder), compute_type  # an adapter unloaded now is loaded again from it later

    # Every model is converted now (once: the cache keeps them), so no request waits for a conversion;
    # adapters are loaded on first use, within --max-loaded-adapters.
    base_dir, compute_type = convert(None)
    converted = {adapter: convert(folder)[0] for adapter, folder in adapters.items()}
    base = CTranslate2Generator(base_dir, model.tokenizer, compute_type, torch.get_num_threads(), model.end_ids)
    return CTranslate2Engine(name, base, converted, model.context, **batching)
