"""Continued pretraining: raw domain text, concatenated and cut into fixed-length blocks.

Every document ends with EOS, the token stream of a split is cut into `block_size` blocks
(the last, shorter block is kept so no text is lost), and the loss covers every token. Long
documents are no longer truncated at `data.max_tokens` as with per-document causal LM, and no
compute goes to padding. Conversations in the data are rendered with the chat template and
trained as text. Domain perplexity on the validation blocks is measured before and after training.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "raw domain text packed into fixed-length blocks (continued pretraining); domain perplexity before/after."
# The runner measures perplexity on the validation blocks before and after training.
DOMAIN_PERPLEXITY = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["pretrain"] = "pretrain"
    block_size: int = Field(512, ge=16, description="Tokens per training block.")


def document_text(tokenizer, row: dict) -> str:
    if "text" in row:
        return row["text"]
    from domaintune.objectives.sft import render

    return render(tokenizer, row["messages"])


def encode_rows(tokenizer, rows: list[dict], max_length: int, config: Config) -> list[dict]:
    return encode_blocks(tokenizer, rows, config.block_size)


def encode_blocks(tokenizer, rows: list[dict], block_size: int) -> list[dict]:
    stream: list[int] = []
    for row in rows:
        stream += tokenizer(document_text(tokenizer, row), add_special_tokens=False)["input_ids"]
        stream.append(tokenizer.eos_token_id)
    blocks = []
    for start in range(0, len(stream), block_size):
        ids = stream[start : start + block_size]
        if len(ids) > 1:  # a single token predicts nothing
            blocks.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return blocks


def block_loss(model, blocks, batch_size: int = 4) -> float | None:
    """Mean next-token cross-entropy over all tokens of the blocks (equal-length blocks batch without padding)."""
    import torch

    if len(blocks) == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for block in blocks:
            ids = torch.tensor([block["input_ids"]])
            logits = model(input_ids=ids, use_cache=False).logits[:, -ids.shape[1] :].float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    model.train(was_training)
    return total / count


def perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None
