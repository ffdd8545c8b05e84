"""What the model learns from. A prepared row's shape picks the objective:
conversations (`messages`) train with SFT, raw documents (`text`) with causal LM."""
from __future__ import annotations

from domaintune.objectives import causal_lm, sft


def encode_row(tokenizer, row: dict, max_length: int) -> dict:
    objective = sft if "messages" in row else causal_lm
    return objective.encode(tokenizer, row, max_length)


def count_tokens(tokenizer, row: dict) -> int:
    """Token length of a row as training sees it (untruncated)."""
    if "messages" in row:
        return len(tokenizer(sft.render(tokenizer, row["messages"]), add_special_tokens=False)["input_ids"])
    return len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1
