"""Chat rendering and label masking: how a row becomes the tokens a causal LM trains and is scored on.

A conversation (`messages`) is rendered with the tokenizer's own chat template and supervised on its
assistant turns only. Assistant spans are found as character ranges (the text the template adds
between "prompt for turn i" and "conversation through turn i"), then mapped to tokens through the
fast tokenizer's offsets, so the mask is right for any template that renders prefixes consistently,
not just ChatML. Assistant turns with `weight: 0` are left out of the labels; tool calls are assistant
turns (supervised), tool results are not. A raw document (`text`) is supervised on every token (causal LM).

Function calling goes through the template's own tool support (`apply_chat_template(tools=...)`) where
it renders both the tools and the calls. Otherwise (SmolLM2's ChatML template ignores them) it is
rendered as text, in the Hermes/Qwen layout many small models have seen: the tool definitions close the
system message inside <tools>...</tools>, each call is a <tool_call>{"name", "arguments"}</tool_call>
line of the assistant turn, and the results of one round of calls are a user turn of
<tool_response>...</tool_response> blocks (a user turn, because many templates take no other role).
"""
from __future__ import annotations

import json

# Label of a token the loss ignores (transformers' and torch's cross-entropy convention).
IGNORE_INDEX = -100

TOOLS_PREAMBLE = (
    "You can call these tools:\n<tools>\n{tools}\n</tools>\n"
    'To call one, answer with <tool_call>\n{{"name": <tool name>, "arguments": <arguments object>}}\n</tool_call>'
)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None) -> str:
    """The conversation as the model reads it; `tools` are the row's tool definitions, if any."""
    uses_tools = tools or any(message["role"] == "tool" or message.get("tool_calls") for message in messages)
    if uses_tools and not _renders_tools(tokenizer):
        messages, tools = _tools_as_text(messages, tools), None
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)


def message_text(message: dict) -> str:
    """A message's words: its content, then each tool call in the text layout (what the data layer
    compares and measures, and an evaluation's reference answer)."""
    calls = [
        "<tool_call>\n" + json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                                     ensure_ascii=False) + "\n</tool_call>"
        for call in message.get("tool_calls", ())
    ]
    return "\n".join(([message["content"]] if message["content"] else []) + calls)


def _tools_as_text(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    rendered: list[dict] = []
    after_tool = False
    for message in messages:
        if message["role"] == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            if after_tool:  # one round of results is one turn
                rendered[-1] = {"role": "user", "content": rendered[-1]["content"] + "\n" + response}
            else:
                rendered.append({"role": "user", "content": response})
        else:
            words = {key: value for key, value in message.items() if key != "tool_calls"}
            rendered.append({**words, "content": message_text(message)})
        after_tool = message["role"] == "tool"
    if tools:
        preamble = TOOLS_PREAMBLE.format(tools="\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools))
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + preamble}
        else:
            rendered.insert(0, {"role": "system", "content": preamble})
    return rendered


# Whether a chat template renders tools and tool calls itself, per template text (asked once each).
_NATIVE_TOOLS: dict[str, bool] = {}
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_offered", "description": "", "parameters": {"type": "object", "properties": {}}}}
_PROBE_CALL = {"type": "function", "function": {"name": "probe_tool_called", "arguments": {}}}


def _renders_tools(tokenizer) -> bool:
    template = str(tokenizer.chat_template)
    if template not in _NATIVE_TOOLS:
        probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}]
        try:
            text = tokenizer.apply_chat_template(probe, tools=[_PROBE_TOOL], tokenize=False)
        except Exception:  # a template may refuse the probe any way it likes (raise_exception, a type error)
            text = ""
        _NATIVE_TOOLS[template] = "probe_tool_offered" in text and "probe_tool_called" in text
    return _NATIVE_TOOLS[template]


def prompt_text(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text a model sees before it answers the final assistant turn."""
    return render(tokenizer, messages[:-1], add_generation_prompt=True, tools=tools)


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its supervised assistant turns (weight not 0)."""
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        before = render(tokenizer, messages[:index], add_generation_prompt=True, tools=tools)
        through = render(tokenizer, messages[: index + 1], tools=tools)
        if not text.startswith(through) or not through.startswith(before):
            raise ValueError("chat template does not render conversation prefixes consistently")
        spans.append((len(before), len(through)))
    return text, spans


def encode_conversation(tokenizer, row: dict, max_length: int) -> dict:
    """A `messages` row: labels on the assistant turns only."""
    text, spans = assistant_spans(tokenizer, row["messages"], row.get("tools"))
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
        return len(tokenizer("\n".join(message_text(m) for m in row["messages"]))["input_ids"])
    if "messages" in row:
        return len(tokenizer(render(tokenizer, row["messages"], tools=row.get("tools")), add_special_tokens=False)["input_ids"])
    return len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1


def last_user_turn(messages: list[dict]) -> str:
    """The last user turn ("" without one): what a classifier or encoder sees, a reward function's prompt."""
    return next((message["content"] for message in reversed(messages) if message["role"] == "user"), "")


def question_text(messages: list[dict]) -> str:
    """What a report shows as a row's question: the last user turn, else the message before the answer (some
    evaluation sets put the question in a second system message)."""
    return last_user_turn(messages) or (message_text(messages[-2]) if len(messages) > 1 else "")


def final_answer(row: dict) -> str:
    """A conversation's reference answer: its final turn (with its tool calls, as text)."""
    return message_text(row["messages"][-1])


def with_examples(row: dict, examples: list[dict]) -> dict:
    """The row with the examples' turns between its system prompt and its own question (k-shot prompting)."""
    system = [m for m in row["messages"] if m["role"] == "system"]
    turns = [m for example in examples for m in example["messages"] if m["role"] != "system"]
    return {**row, "messages": system + turns + [m for m in row["messages"] if m["role"] != "system"]}
