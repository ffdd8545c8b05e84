"""Load tokenizers and causal LMs safely (safetensors only, remote code off unless asked)."""
from __future__ import annotations

from domaintune.config import ModelConfig
from domaintune.errors import DomaintuneError
from domaintune.models.registry import resolve_model_path


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return (OSError, HfHubHTTPError, LocalEntryNotFoundError)


def _common_kwargs(config: ModelConfig) -> dict:
    return {"revision": config.revision, "trust_remote_code": config.trust_remote_code}


def _explain_load_failure(name: str, error: BaseException) -> DomaintuneError:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DomaintuneError(
        f"model.name: could not load '{name}': {text}\n"
        "If this is a Hugging Face hub id, the hub may be unreachable from this machine; "
        "download the model elsewhere and point model.name at the local folder, "
        "or use a bundled model (`domaintune models list`)."
    )


def load_tokenizer(config: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    path = path or resolve_model_path(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_common_kwargs(config))
    except _hub_errors() as error:
        raise _explain_load_failure(config.name, error) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(config: ModelConfig, path: str | None = None, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    path = path or resolve_model_path(config.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, use_safetensors=True, **_common_kwargs(config)
        )
    except _hub_errors() as error:
        raise _explain_load_failure(config.name, error) from None
    return model


def is_adapter_folder(path) -> bool:
    from pathlib import Path

    return (Path(path) / "adapter_config.json").exists()


def load_trained_model(config: ModelConfig, model_dir, merge: bool = True, dtype=None):
    """The tuned model from a run's model/ folder: full weights, or base + adapter (merged unless asked not to)."""
    from peft import PeftModel

    if not is_adapter_folder(model_dir):
        return load_causal_lm(config, path=str(model_dir), dtype=dtype)
    model = PeftModel.from_pretrained(load_causal_lm(config, dtype=dtype), str(model_dir))
    return model.merge_and_unload() if merge else model
