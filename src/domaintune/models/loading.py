"""Load tokenizers and causal LMs safely (safetensors only, remote code off unless asked)."""
from __future__ import annotations

from contextlib import contextmanager

from domaintune.config import ModelConfig
from domaintune.config.runtime import inference_device
from domaintune.core.errors import DomaintuneError
from domaintune.methods import own_artifact_method
from domaintune.models.registry import resolve_model_path


@contextmanager
def loading_errors(config: ModelConfig):
    """A model that can't be found becomes a user error naming model.name."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        yield
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DomaintuneError(
            f"model.name: could not load '{config.name}': {text}\n"
            "If this is a Hugging Face hub id, the hub may be unreachable from this machine; "
            "download the model elsewhere and point model.name at the local folder, "
            "or use a bundled model (`domaintune models list`)."
        ) from None


def from_pretrained(model_class, config: ModelConfig, path: str | None = None, **kwargs):
    """`model_class.from_pretrained` on the recipe's model (or `path`), with its revision and
    trust_remote_code setting."""
    with loading_errors(config):
        return model_class.from_pretrained(
            path or resolve_model_path(config.name), revision=config.revision,
            trust_remote_code=config.trust_remote_code, **kwargs,
        )


def load_sentence_transformer(config: ModelConfig, path: str | None = None):
    """A sentence-transformers encoder of the recipe's model (or `path`) on the CPU, with its revision
    and trust_remote_code setting."""
    from sentence_transformers import SentenceTransformer

    with loading_errors(config):
        return SentenceTransformer(path or resolve_model_path(config.name), device="cpu", revision=config.revision,
                                   trust_remote_code=config.trust_remote_code)


def load_tokenizer(config: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, config, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(config: ModelConfig, path: str | None = None, dtype=None, load_kwargs: dict | None = None):
    """A causal LM; `load_kwargs` are a method's extra `from_pretrained` arguments (qlora: 4-bit quantisation)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = from_pretrained(AutoModelForCausalLM, config, path, dtype=dtype or torch.float32, use_safetensors=True,
                                **(load_kwargs or {}))
    except (ImportError, RuntimeError, ValueError) as error:
        if not load_kwargs or "quantization_config" not in load_kwargs:
            raise
        # bitsandbytes exists for this platform but can't quantise here (no supported CPU/GPU backend).
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DomaintuneError(
            f"model.name: could not load '{config.name}' in 4-bit on this machine: {text}\n"
            "Use method.name: lora (the same adapter on the full-precision model)."
        ) from None
    return model


def on_inference_device(model):
    """The model moved to `inference_device()` (the GPU where there is one) to answer, score or serve.
    A model its loader placed itself (quantised, or spread over devices) stays where it is."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_device_map", None):
        return model
    return model.to(inference_device())


PEFT_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def is_adapter_folder(path) -> bool:
    """An adapter on top of the base model (peft's, or a method's own format), not full weights."""
    from pathlib import Path

    return (Path(path) / PEFT_ADAPTER_FILES[0]).exists() or own_artifact_method(path) is not None


def adapter_files(path) -> list[str]:
    """The names of the adapter files in a model folder (what export copies)."""
    own = own_artifact_method(path)
    return list(own.ARTIFACT_FILES) if own is not None else list(PEFT_ADAPTER_FILES)


def merge_blocker(path) -> str | None:
    """Why the adapter in this folder can't be merged into the base weights, or None if it can."""
    import json
    from pathlib import Path

    own = own_artifact_method(path)
    if own is not None:
        return None if getattr(own, "MERGEABLE", True) else getattr(own, "NOT_MERGEABLE_BECAUSE", "the adapter is not linear")
    config_file = Path(path) / PEFT_ADAPTER_FILES[0]
    if not config_file.exists():
        return None
    peft_type = json.loads(config_file.read_text(encoding="utf-8")).get("peft_type", "")
    if peft_type in PROMPT_LEARNING_TYPES:
        return f"{peft_type.lower().replace('_', ' ')} adds virtual tokens instead of changing weights"
    return None


# peft methods that prepend virtual tokens (or their keys/values) instead of changing weights.
PROMPT_LEARNING_TYPES = {"PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT"}


def load_trained_model(config: ModelConfig, model_dir, merge: bool = True, dtype=None, load_kwargs: dict | None = None):
    """The tuned model from a run's model/ folder: full weights, or base + adapter.

    Adapters are merged into the weights unless asked not to or impossible (prefix and prompt
    tuning, bottleneck adapters): those come back as the base model with the adapter attached.
    `load_kwargs` loads the base as in training (e.g. 4-bit for qlora); by default it is full precision.
    """
    from peft import PeftModel

    own = own_artifact_method(model_dir)
    if own is not None:
        return own.load_trained(load_causal_lm(config, dtype=dtype, load_kwargs=load_kwargs), model_dir)
    if not is_adapter_folder(model_dir):
        return load_causal_lm(config, path=str(model_dir), dtype=dtype)
    model = PeftModel.from_pretrained(load_causal_lm(config, dtype=dtype, load_kwargs=load_kwargs), str(model_dir))
    if model.active_peft_config.peft_type == "PROMPT_TUNING":
        _align_logits_with_inputs(model)
    if merge and merge_blocker(model_dir) is None:
        return model.merge_and_unload()
    return model


def _align_logits_with_inputs(model) -> None:
    """Prompt tuning returns logits for its virtual tokens too; drop them so callers see one logit row
    per input token, as with every other method (generation goes through `generate`, unaffected)."""

    def trim(module, args, kwargs, output):
        inputs = kwargs.get("input_ids", args[0] if args else None)
        logits = getattr(output, "logits", None)
        if inputs is not None and logits is not None and logits.shape[1] > inputs.shape[1]:
            output.logits = logits[:, -inputs.shape[1] :]
        return output

    model.register_forward_hook(trim, with_kwargs=True)
