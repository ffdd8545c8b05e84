"""Supervised fine-tuning on conversations: the loss covers assistant turns only.

The conversation is rendered with the tokenizer's own chat template. Assistant spans are
found as character ranges (the text the template adds between "prompt for turn i" and
"conversation through turn i"), then mapped to tokens through the fast tokenizer's offsets,
so the mask is right for any template that renders prefixes consistently, not just ChatML.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "conversations, prompt/completion or labelled rows; loss on the answers only. The default for task data."
IGNORE_INDEX = -100


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["auto", "sft"] = Field(
        "auto",
        description="auto/sft: conversations train on the answers, raw text rows as causal LM per document.",
    )


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The text a model sees before it answers the final assistant turn."""
    return render(tokenizer, messages[:-1], add_generation_prompt=True)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    text = render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], add_generation_prompt=True)
        through = render(tokenizer, messages[: index + 1])
        if not text.startswith(through) or not through.startswith(before):
            raise ValueError("chat template does not render conversation prefixes consistently")
        spans.append((len(before), len(through)))
    return text, spans


def encode(tokenizer, row: dict, max_length: int) -> dict:
    text, spans = assistant_spans(tokenizer, row["messages"])
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    labels = []
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        inside = any(span_start <= start < span_end for span_start, span_end in spans) and end > start
        labels.append(token_id if inside else IGNORE_INDEX)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
