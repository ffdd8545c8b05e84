"""What the model learns from. A prepared row's shape picks the encoding:
conversations (`messages`) train with SFT, raw documents (`text`) with causal LM.

The recipe's `objective` adds to that: `pretrain` packs the raw text of a split into fixed-length
blocks (`encode_rows`) and measures domain perplexity before and after; `instruct` rewrites the
prepared rows into instructions built from a task description (`after_prepare`).
"""
from __future__ import annotations

from domaintune.objectives import causal_lm, sft

OBJECTIVES = {
    "sft": "conversations, prompt/completion or labelled rows; loss on the answers only. The default for task data.",
    "pretrain": "raw domain text packed into fixed-length blocks (continued pretraining); domain perplexity before/after.",
    "instruct": "rows rewritten into instructions from a task description; labelled rows list the allowed answers.",
}


def encode_row(tokenizer, row: dict, max_length: int) -> dict:
    objective = sft if "messages" in row else causal_lm
    return objective.encode(tokenizer, row, max_length)


def encode_rows(tokenizer, rows: list[dict], max_length: int, objective=None) -> list[dict]:
    """A split's training examples: one per row, or fixed-length blocks of the whole split for pretrain.

    A row whose assistant turn was cut off entirely by truncation teaches nothing and is left out."""
    if objective is not None and objective.name == "pretrain":
        from domaintune.objectives.pretrain import encode_blocks

        encoded = encode_blocks(tokenizer, rows, objective.block_size)
    else:
        encoded = [encode_row(tokenizer, row, max_length) for row in rows]
    return [row for row in encoded if any(label != -100 for label in row["labels"])]


def after_prepare(data_dir, recipe) -> None:
    """Objective-specific rewriting of the prepared splits (instruct)."""
    if recipe.objective.name == "instruct":
        from domaintune.objectives.instruct import rewrite_splits

        rewrite_splits(data_dir, recipe.objective.task)


def count_tokens(tokenizer, row: dict) -> int:
    """Token length of a row as training sees it (untruncated)."""
    if "messages" in row:
        return len(tokenizer(sft.render(tokenizer, row["messages"]), add_special_tokens=False)["input_ids"])
    return len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1
