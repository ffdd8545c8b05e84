"""Prompt tuning: learned input embeddings (a soft prompt) placed before every input.

The model's weights don't change; the adapter is `num_virtual_tokens` embedding vectors,
initialised from a text (`init_text`, e.g. a description of the task) or randomly. It can't be
merged into the weights, so `export` writes the adapter only. Packed batches are turned off for
it (the soft prompt shifts every position), so training uses padded batches.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "a learned soft prompt; the smallest artifact, best with larger models and a clear task description"
TRAINS = "the embeddings of a few virtual tokens before the input"
PACKING = False  # the soft prompt is prepended per row: the padding-free packed engine can't express it
MERGEABLE = False


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(16, ge=1, description="Length of the soft prompt.")
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's token embeddings; null: random."
    )


def apply(model, config: Config):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    text = {}
    if config.init_text:
        # The tokenizer comes from the model's own folder (bundled models are cached as plain
        # Hugging Face folders, so this needs no hub and no GGUF arguments).
        text = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": config.init_text,
            "tokenizer_name_or_path": model.name_or_path,
        }
    peft_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=config.num_virtual_tokens,
        **(text or {"prompt_tuning_init": PromptTuningInit.RANDOM}),
    )
    return get_peft_model(model, peft_config)
