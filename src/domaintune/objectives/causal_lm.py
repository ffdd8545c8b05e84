"""Causal language modelling on raw text: every token is predicted (continued pretraining)."""
from __future__ import annotations


def encode(tokenizer, row: dict, max_length: int) -> dict:
    ids = tokenizer(row["text"], add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    # End each document with EOS so the model learns where text stops.
    ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}
