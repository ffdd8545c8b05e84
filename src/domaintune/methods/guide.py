"""`domaintune methods`: every method and objective, when to use it, and what it costs for a model.

Parameter counts come from applying each method's default config to the model built on the
`meta` device (no weights are read, so this takes seconds even for large models). Memory is
the static part of training: weights + gradients + Adam state of the trainable parameters;
activations come on top and depend on batch and length (`domaintune estimate` measures them).
"""
from __future__ import annotations

import copy

from domaintune.core.errors import DomaintuneError
from domaintune.methods import METHODS
from domaintune.methods.freeze import transformer_blocks

ADAM_BYTES_PER_TRAINABLE = 4 + 8  # fp32 gradient + two fp32 moments
FP32 = 4
NF4 = 0.5 + 1 / 64  # 4 bits a weight plus an 8-bit (double-quantised) scale per block of 64


def _meta_model(path: str, build=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            return (build or AutoModelForCausalLM.from_config)(config)
    except (OSError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DomaintuneError(f"--model {path}: can't size the methods for it ({first}); they adapt causal LMs") from None


def _quantised_numel(model) -> int:
    """Parameters bitsandbytes would store in 4-bit: the linear layers inside the transformer blocks."""
    import torch

    _, blocks = transformer_blocks(model)
    return sum(m.weight.numel() for block in blocks for m in block.modules() if isinstance(m, torch.nn.Linear))


def describe_methods(model_path: str) -> list[dict]:
    base = _meta_model(model_path)
    total = sum(p.numel() for p in base.parameters())
    quantised = _quantised_numel(base)
    rows = []
    for name, module in METHODS.items():
        config = module.Config()
        # qlora's adapter is a LoRA adapter; only the base model's storage differs.
        quantises = hasattr(module, "load_kwargs")
        if quantises:
            lora = METHODS["lora"]
            module, config = lora, lora.Config(**config.model_dump(include=set(lora.Config.model_fields) - {"name"}))
        own_base = getattr(module, "meta_model", None)  # head: the model with its task head
        model = module.apply(_meta_model(model_path, own_base) if own_base else copy.deepcopy(base), config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        weights = quantised * NF4 + (total - quantised) * FP32 if quantises else total * FP32
        added = sum(p.numel() for p in model.parameters()) - total
        module = METHODS[name]
        memory = weights + added * FP32 + trainable * ADAM_BYTES_PER_TRAINABLE
        rows.append({
            "name": name,
            "trains": getattr(module, "TRAINS", ""),
            "when": getattr(module, "SUMMARY", ""),
            "trainable": trainable,
            "share": trainable / total,
            "memory_mb": round(memory / 2**20),
            "packing": getattr(module, "PACKING", True),
            "mergeable": getattr(module, "MERGEABLE", True),
        })
    return rows
