"""A local model as a function from chat conversations to replies, for synthesis and paraphrase.

Any model the registry can load works (the bundled SmolLM2 by default). Decoding is greedy
and batched by the evaluation's `generate`, so the same recipe gives the same data.
"""
from __future__ import annotations

from typing import Callable

from domaintune.config import Recipe
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import render
from domaintune.models.inference import generate
from domaintune.models.loading import load_causal_lm, load_tokenizer

# [{"role", "content"}, ...] per prompt -> one reply per prompt
Generate = Callable[[list[list[dict]]], list[str]]


def load_generator(recipe: Recipe, model_name: str | None, max_new_tokens: int, batch_size: int) -> Generate:
    configure_threads(recipe.training)
    model_config = recipe.model.model_copy(update={"name": model_name}) if model_name else recipe.model
    tokenizer = load_tokenizer(model_config)
    model = load_causal_lm(model_config)
    bf16 = use_bf16(recipe)

    def reply(conversations: list[list[dict]]) -> list[str]:
        prompts = [render(tokenizer, messages, add_generation_prompt=True) for messages in conversations]
        return generate(model, tokenizer, prompts, max_new_tokens, batch_size, bf16)

    return reply
