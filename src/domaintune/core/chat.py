"""Chat rendering and label masking: how a row becomes the tokens a causal LM trains and is scored on.

A conversation (`messages`) is rendered with the tokenizer's own chat template and supervised on its
assistant turns only. Assistant spans are found as character ranges (the text the template adds
between "prompt for turn i" and "conversation through turn i"), then mapped to tokens through the
fast tokenizer's offsets, so the mask is right for any template that renders prefixes consistently,
not just ChatML. A raw document (`text`) is supervised on every token (causal LM).
"""
from __future__ import annotations

# Label of a token the loss ignores (transformers' and torch's cross-entropy convention).
IGNORE_INDEX = -100


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


def encode_conversation(tokenizer, row: dict, max_length: int) -> dict:
    """A `messages` row: labels on the assistant turns only."""
    text, spans = assistant_spans(tokenizer, row["messages"])
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    labels = []
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        inside = any(span_start <= start < span_end for span_start, span_end in spans) and end > start
        labels.append(token_id if inside else IGNORE_INDEX)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}


def encode_document(tokenizer, row: dict, max_length: int) -> dict:
    """A `text` row: every token is predicted (continued pretraining)."""
    ids = tokenizer(row["text"], add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    # End each document with EOS so the model learns where text stops.
    ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def encode_row(tokenizer, row: dict, max_length: int) -> dict:
    """One training example; the row's shape picks the encoding."""
    encode = encode_conversation if "messages" in row else encode_document
    return encode(tokenizer, row, max_length)


def encode_rows(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """A split's examples, one per row, without those truncation left nothing to learn from."""
    return supervised([encode_row(tokenizer, row, max_length) for row in rows])


def supervised(examples: list[dict]) -> list[dict]:
    """The examples with at least one supervised label: a row whose assistant turn was cut off
    entirely by truncation teaches nothing."""
    return [example for example in examples if any(label != IGNORE_INDEX for label in example["labels"])]


def count_tokens(tokenizer, row: dict) -> int:
    """Token length of a row as training sees it (untruncated). A tokenizer without a chat template
    (an encoder's, for classify/fewshot/contrastive) sees a conversation's turns as plain text."""
    if "messages" in row and tokenizer.chat_template is None:
        return len(tokenizer("\n".join(m["content"] for m in row["messages"]))["input_ids"])
    if "messages" in row:
        return len(tokenizer(render(tokenizer, row["messages"]), add_special_tokens=False)["input_ids"])
    return len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1


def last_user_turn(messages: list[dict]) -> str:
    """The last user turn ("" without one): what a classifier or encoder sees, a reward function's prompt."""
    return next((message["content"] for message in reversed(messages) if message["role"] == "user"), "")


def final_answer(row: dict) -> str:
    """A conversation's reference answer: its final turn."""
    return row["messages"][-1]["content"]


def with_examples(row: dict, examples: list[dict]) -> dict:
    """The row with the examples' turns between its system prompt and its own question (k-shot prompting)."""
    system = [m for m in row["messages"] if m["role"] == "system"]
    turns = [m for example in examples for m in example["messages"] if m["role"] != "system"]
    return {**row, "messages": system + turns + [m for m in row["messages"] if m["role"] != "system"]}
