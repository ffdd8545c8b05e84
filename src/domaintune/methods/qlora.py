"""QLoRA: the base model is loaded with 4-bit NF4 weights (bitsandbytes) and LoRA trains on top.

The frozen base takes about an eighth of its fp32 memory; the adapter and the layers that stay
in full precision (norms, embeddings) are trained as with `lora`. bitsandbytes 0.50 runs 4-bit
on CPUs (AVX-512 here) and CUDA GPUs; where it can't, loading stops with a message.

The saved artifact is an ordinary LoRA adapter. `evaluate` and `export` apply it to the
full-precision base (the usual way to ship a QLoRA adapter), so the tuned numbers include the
small difference between the 4-bit base it was trained on and the original weights.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from domaintune.core.errors import DomaintuneError
from domaintune.methods import lora

SUMMARY = "LoRA on a 4-bit base model; when the model's weights don't fit in memory otherwise"
TRAINS = "LoRA matrices; the base weights are frozen and stored in 4-bit NF4"


class Config(lora.Config):
    name: Literal["qlora"] = "qlora"
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the frozen base weights.")
    double_quant: bool = Field(True, description="Also quantise the quantisation constants (~0.4 bit/param less).")
    compute_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Dtype the 4-bit weights are de-quantised to for each matmul."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% slower steps."
    )


def require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise DomaintuneError(
            "method qlora needs bitsandbytes: pip install bitsandbytes==0.50.2 (or use method.name: lora)"
        ) from None
    except Exception as error:  # a broken native library raises other errors at import
        raise DomaintuneError(
            f"method qlora: bitsandbytes does not work on this machine ({error}); use method.name: lora"
        ) from None


def load_kwargs(config: Config) -> dict:
    """Extra `from_pretrained` arguments: load the base in 4-bit."""
    import torch
    from transformers import BitsAndBytesConfig

    require_bitsandbytes()
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quant_type,
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype),
        ),
    }


def apply(model, config: Config):
    from peft import get_peft_model, prepare_model_for_kbit_training

    if not getattr(model, "is_loaded_in_4bit", False):
        raise DomaintuneError("method qlora: the base model was not loaded in 4-bit (load it with load_kwargs)")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return get_peft_model(model, lora.peft_config(config))
