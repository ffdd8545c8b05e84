"""Continued pretraining: raw domain text, concatenated and cut into fixed-length blocks.

Every document ends with EOS, the token stream of a split is cut into `block_size` blocks
(the last, shorter block is kept so no text is lost), and the loss covers every token. Long
documents are no longer truncated at `data.max_tokens` as with per-document causal LM, and no
compute goes to padding. Conversations in the data are rendered with the chat template and
trained as text. Domain perplexity on the validation blocks is measured before and after training.
"""
from __future__ import annotations

from domaintune.config.objectives import PretrainConfig
from domaintune.core.chat import render

SUMMARY = "raw domain text packed into fixed-length blocks (continued pretraining); domain perplexity before/after."
Config = PretrainConfig  # the registry and the recipe know an objective by its Config
# The runner measures perplexity on the validation blocks before and after training.
DOMAIN_PERPLEXITY = True


def document_text(tokenizer, row: dict) -> str:
    if "text" in row:
        return row["text"]

    return render(tokenizer, row["messages"], tools=row.get("tools"))


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
