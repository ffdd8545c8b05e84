"""A local model as a function from chat conversations to replies, for synthesis and paraphrase.

Any model the registry can load works (the bundled SmolLM2 by default). Decoding is greedy
and batched on the recipe's generation engine (models/generation.py), so the same recipe gives the same data.
"""
from __future__ import annotations

from typing import Callable

from domaintune.config import Recipe
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import render
from domaintune.models.generation import open_generator

# [{"role", "content"}, ...] per prompt -> one reply per prompt
Generate = Callable[[list[list[dict]]], list[str]]


def load_generator(recipe: Recipe, model_name: str | None, max_new_tokens: int, batch_size: int) -> Generate:
    threads = configure_threads(recipe.training)
    model_config = recipe.model.model_copy(update={"name": model_name}) if model_name else recipe.model
    generator = open_generator(model_config, recipe.inference, bf16=use_bf16(recipe), exact=False, threads=threads)
    tokenizer = generator.tokenizer

    def reply(conversations: list[list[dict]]) -> list[str]:
        prompts = [render(tokenizer, messages, add_generation_prompt=True) for messages in conversations]
        return generator.generate(prompts, max_new_tokens, batch_size)

    return reply
