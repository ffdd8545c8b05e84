"""Input formats and their conversion to canonical rows.

Canonical rows are what every later stage consumes:
- conversations: {"messages": [{"role", "content"}, ...], "label": str | None}, an optional
  system message, then user/assistant turns alternating, ending with the assistant; with function
  calling, an assistant turn may carry `tool_calls` (arguments parsed into an object) answered by
  `tool` messages, and the row carries its `tools`; an assistant turn not to be trained on has
  `weight: 0`;
- raw text (continued pretraining): {"text": str}.
- preferences (pairwise, ranking, rating): conversations whose answer is the best one, with the
  worse answers or the answer's score beside it (see preferences.py).

Two additive formats also become conversations, so every objective can read them:
- `pairs` (anchor, positive) for embedding training: the anchor asks, the positive answers;
- `spans` (text, entities: [{start, end, label}]) for entity extraction: the answer is the
  `[NAME - TYPE, ...]` list (or "No entities found") and the spans stay in the row as `entities`,
  so a token-classification head labels exactly those characters.

OpenAI chat files are read as OpenAI's fine-tuning guide writes them. System messages, wherever they
are, are merged in order into one leading system message: most bases' chat templates take a system
message only first (Llama 3, Mistral, Gemma), and a row must render alike on every base a run compares.
When no user message comes before the first answer, the system messages after the first one are
the question (evaluation sets put it in a second, named system message). A `name` is kept as a
"name: " prefix of the content, since chat templates drop the field and the reference answer must be
what the model is trained to write. The older `functions` / `function_call` / `function` role are
read as tools.

A row that does not fit its format raises `RowError` (the row is rejected, the run goes on);
a file that cannot be in the format at all raises `DomaintuneError`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from domaintune.config import DataConfig
from domaintune.core.entities import entity_list
from domaintune.core.errors import DomaintuneError
from domaintune.data.preferences import PREFERENCE_FORMATS, to_preference_row
from domaintune.data.readers import RawRow, json_type

# Required canonical columns per format, in detection order: the more specific formats
# come first, so a row with `text` and `label` is labelled rather than raw text.
FORMATS: dict[str, tuple[str, ...]] = {
    **PREFERENCE_FORMATS,
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "spans": ("text", "entities"),
    "labelled": ("text", "label"),
    "pairs": ("anchor", "positive"),
    "text": ("text",),
}
# OpenAI's roles; `developer` is its newer name for `system`, `function` the older one for `tool`.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RowError(ValueError):
    """A row that does not fit its format; `reason` says exactly what is wrong."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# What to change when many rows are rejected for one reason, by the reason's wording.
_FIX_HINTS = (
    (r"\.(role|from): expected .* here",
     "user and assistant turns must alternate, starting with the user's and ending with the assistant's "
     "(system messages may come anywhere, tool messages answer an assistant's tool_calls); join consecutive "
     "messages of one speaker into one, or set data.format if the file is in another layout"),
    (r"the last message must be the assistant's",
     "each row ends with the answer the model learns (an assistant message); a row ending with a question "
     "has nothing to learn from"),
    (r"unknown role",
     "chat roles are system, developer, user, assistant and tool; ShareGPT's are system, human and gpt"),
    (r"^missing column",
     "map the file's column names onto the format's with data.columns (e.g. {output: answer}), or set data.format"),
    (r"\.weight: ", "OpenAI's weight is 0 (do not train on this turn) or 1 (train on it), on assistant messages only"),
    (r"^not valid JSON", "a .jsonl file holds one JSON object per line; a file holding one JSON array is a .json file"),
)


def fix_hint(reason: str) -> str | None:
    """How to fix rows rejected for `reason`, where a reason alone does not say it."""
    return next((hint for pattern, hint in _FIX_HINTS if re.search(pattern, reason)), None)


def reason_kind(reason: str) -> str:
    """A rejection reason without its message index: the same mistake at messages[1] and messages[3]."""
    return re.sub(r"\[\d+\]", "[*]", reason)


def column(config: DataConfig, name: str) -> str:
    """The user's name for a canonical column."""
    return config.columns.get(name, name)


def missing_columns(fmt: str, keys, config: DataConfig) -> list[str]:
    return [column(config, name) for name in FORMATS[fmt] if column(config, name) not in keys]


def detect_format(keys, config: DataConfig) -> str | None:
    return next((fmt for fmt in FORMATS if not missing_columns(fmt, keys, config)), None)


def resolve_format(path: Path, rows: list[RawRow], config: DataConfig) -> str:
    """The file's format: declared in the config, or detected from the first row that fits one.

    CSV and Parquet rows all share the header, so a missing column is a file error; JSON(L)
    rows may differ, so the file is wrong only when no row at all has the columns (the
    others are rejected one by one). A file none of whose rows parse is wrong as a whole.
    """
    parsed = [row.data for row in rows if row.data is not None]
    if not parsed:
        first = rows[0]
        raise DomaintuneError(f"{path}: no row could be read (line {first.line}: {first.error})")
    where = f"{path} line 1" if path.suffix.lower() == ".csv" else str(path)
    if config.format == "auto":
        fmt = next((found for data in parsed if (found := detect_format(data, config))), None)
        if fmt is None:
            raise DomaintuneError(
                f"{where}: cannot tell the data format from the columns ({', '.join(parsed[0])}); "
                f"expected one of: {_format_list(config)}. Set data.format, or map your columns with data.columns"
            )
        return fmt
    fmt = config.format
    if path.suffix.lower() in (".csv", ".parquet"):
        missing = missing_columns(fmt, parsed[0], config)
        if missing:
            raise DomaintuneError(f"{where}: no column {_quoted(missing)}, which format '{fmt}' needs")
    elif all(missing_columns(fmt, data, config) for data in parsed):
        needed = [column(config, name) for name in FORMATS[fmt]]
        raise DomaintuneError(f"{where}: no row has the column(s) {_quoted(needed)} that format '{fmt}' needs")
    return fmt


def _format_list(config: DataConfig) -> str:
    return "; ".join(f"{fmt} ({', '.join(column(config, name) for name in names)})" for fmt, names in FORMATS.items())


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def to_canonical(data: dict, fmt: str, config: DataConfig) -> dict:
    """Convert one row of format `fmt` to a canonical row, or raise RowError."""
    if fmt == "text":
        return {"text": _text(data, "text", config)}
    label, extra = None, {}  # extra: what the row carries beside its messages
    if fmt in PREFERENCE_FORMATS:
        extra = to_preference_row(data, fmt, lambda name: column(config, name), RowError)
        messages = extra.pop("messages")
    elif fmt == "chat":
        messages = _messages(data, config, "messages", "role", "content", CHAT_ROLES.get)
        tools = _tools(data, config)
        if tools:
            extra["tools"] = tools
    elif fmt == "sharegpt":
        messages = _messages(data, config, "conversations", "from", "value", SHAREGPT_ROLES.get)
    elif fmt == "alpaca":
        prompt = _text(data, "instruction", config)
        given = _text(data, "input", config, optional=True)
        messages = _turn(prompt + "\n\n" + given if given.strip() else prompt, _text(data, "output", config))
    elif fmt == "prompt_completion":
        messages = _turn(_text(data, "prompt", config), _text(data, "completion", config))
    elif fmt == "pairs":
        messages = _turn(_text(data, "anchor", config), _text(data, "positive", config))
    elif fmt == "spans":
        text = _text(data, "text", config)
        entities = _spans(data, config, text)
        messages = _turn(text, entity_list(text, entities))
        return {"messages": _with_system(messages, config), "label": None, "entities": entities}
    elif fmt == "labelled":
        label = _label(data, config)
        messages = _turn(_label_prompt(config, _text(data, "text", config)), label)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return {"messages": _with_system(messages, config), "label": label, **extra}


def _with_system(messages: list[dict], config: DataConfig) -> list[dict]:
    if config.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    return messages


def _spans(data: dict, config: DataConfig, text: str) -> list[dict]:
    key = column(config, "entities")
    value = data.get(key)
    if not isinstance(value, list):
        raise RowError(f"column {key!r}: expected a list of {{start, end, label}}, got {json_type(value)}")
    spans = []
    for index, span in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(span, dict) or not {"start", "end", "label"} <= set(span):
            raise RowError(f"{where}: expected an object with 'start', 'end' and 'label'")
        start, end, label = span["start"], span["end"], span["label"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise RowError(f"{where}: start/end {start!r}..{end!r} is not a span of the {len(text)}-character text")
        if not isinstance(label, str) or not label.strip():
            raise RowError(f"{where}.label: expected a type name, got {json_type(label)}")
        if text[start:end] != text[start:end].strip():
            raise RowError(f"{where}: span {text[start:end]!r} starts or ends with whitespace")
        spans.append({"start": start, "end": end, "label": label.strip().upper()})
    spans.sort(key=lambda span: span["start"])
    for before, after in zip(spans, spans[1:]):
        if after["start"] < before["end"]:
            raise RowError(f"{key}: spans {text[before['start']:before['end']]!r} and "
                           f"{text[after['start']:after['end']]!r} overlap")
    return spans


def _text(data: dict, name: str, config: DataConfig, optional: bool = False) -> str:
    key = column(config, name)
    value = data.get(key)
    if value is None:
        if optional:
            return ""
        raise RowError(f"missing column {key!r}" if key not in data else f"column {key!r} is empty (null)")
    if not isinstance(value, str):
        raise RowError(f"column {key!r}: expected text, got {json_type(value)}")
    return value


def _label(data: dict, config: DataConfig) -> str:
    key = column(config, "label")
    value = data.get(key)
    # Numbers and booleans are fine labels (0/1, true/false); the answer is their text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    if key not in data:
        raise RowError(f"missing column {key!r}")
    raise RowError(f"column {key!r}: expected a label, got {json_type(value)}")


def _label_prompt(config: DataConfig, text: str) -> str:
    try:
        return config.label_prompt.format(text=text)
    except (KeyError, IndexError, ValueError) as error:
        # A recipe mistake, not a row's: stop the run instead of rejecting every row.
        raise DomaintuneError(
            f"data.label_prompt {config.label_prompt!r} is not a valid template ({error}); "
            "use {text} for the row's text and {{ }} for literal braces"
        ) from None


def _turn(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _messages(data: dict, config: DataConfig, name: str, role_key: str, content_key: str, to_role) -> list[dict]:
    """Read a list of turns (chat's role/content or ShareGPT's from/value) and check its shape."""
    key = column(config, name)
    if key not in data:
        raise RowError(f"missing column {key!r}")
    turns = data[key]
    if not isinstance(turns, list):
        raise RowError(f"{key}: expected a list of messages, got {json_type(turns)}")
    if not turns:
        raise RowError(f"{key}: no messages")
    messages = [_message(turn, f"{key}[{index}]", role_key, content_key, to_role) for index, turn in enumerate(turns)]
    indices = list(range(len(messages)))  # each message's place in the file, for the reasons
    _question_from_system(messages, indices)
    _check_turn_order(messages, indices, f"{key}[{{}}]", role_key)
    if all(message.get("weight") == 0 for message in messages if message["role"] == "assistant"):
        raise RowError(f"{key}: every assistant message has weight 0, so there is nothing to train on")
    systems = [message["content"] for message in messages if message["role"] == "system"]
    others = [message for message in messages if message["role"] != "system"]
    return ([{"role": "system", "content": "\n\n".join(systems)}] if systems else []) + others


def _message(turn, where: str, role_key: str, content_key: str, to_role) -> dict:
    if not isinstance(turn, dict):
        raise RowError(f"{where}: expected an object with {role_key!r} and {content_key!r}, got {json_type(turn)}")
    if role_key not in turn:
        raise RowError(f"{where}: missing {role_key!r}")
    role = to_role(turn[role_key]) if isinstance(turn[role_key], str) else None
    if role is None:
        raise RowError(f"{where}.{role_key}: unknown role {turn[role_key]!r}")
    tool_calls = _tool_calls(turn, where) if role == "assistant" else None
    content = turn.get(content_key)
    if content is None and tool_calls:  # a call without words: OpenAI leaves `content` out or null
        content = ""
    elif content_key not in turn:
        raise RowError(f"{where}: missing {content_key!r}")
    elif not isinstance(content, str):
        raise RowError(f"{where}.{content_key}: expected text, got {json_type(content)}")
    name = turn.get("name")
    if role == "tool":
        message = {"role": role, "content": content}
        # A tool result names its call (`tool_call_id`), or its function (the older `function` role's `name`).
        message.update({field: turn[field] for field in ("tool_call_id", "name") if isinstance(turn.get(field), str)})
        return message
    if isinstance(name, str) and name.strip() and content:
        content = f"{name.strip()}: {content}"
    message = {"role": role, "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if "weight" in turn and _weight(turn["weight"], role, where) == 0:
        message["weight"] = 0
    return message


def _weight(weight, role: str, where: str) -> int:
    if role != "assistant":
        raise RowError(f"{where}.weight: only assistant messages have a weight")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RowError(f"{where}.weight: expected 0 (not trained on) or 1 (trained on), got {weight!r}")
    return int(weight)


def _tool_calls(turn: dict, where: str) -> list[dict] | None:
    """An assistant turn's calls, each {"type": "function", "function": {"name", "arguments": object}}
    (with its "id" when given); the older `function_call` is one call."""
    legacy = isinstance(turn.get("function_call"), dict)
    if legacy:
        calls, where = [{"type": "function", "function": turn["function_call"]}], f"{where}.function_call"
    elif turn.get("tool_calls") is None:
        return None
    else:
        calls, where = turn["tool_calls"], f"{where}.tool_calls"
        if not isinstance(calls, list) or not calls:
            got = "an empty list" if calls == [] else json_type(calls)
            raise RowError(f"{where}: expected a list of tool calls, got {got}")
    parsed = []
    for index, call in enumerate(calls):
        at = where if legacy else f"{where}[{index}]"
        function_at = where if legacy else f"{at}.function"  # the older function_call is the function itself
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]):
            raise RowError(f"{at}: expected {{'type': 'function', 'function': {{'name', 'arguments'}}}}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI writes the arguments as a JSON string; templates want the object
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as error:
                raise RowError(f"{function_at}.arguments: not valid JSON ({error.msg})") from None
        if not isinstance(arguments, dict):
            raise RowError(f"{function_at}.arguments: expected a JSON object, got {json_type(arguments)}")
        identity = {"id": call["id"]} if isinstance(call.get("id"), str) else {}
        parsed.append({**identity, "type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return parsed


def _tools(data: dict, config: DataConfig) -> list[dict] | None:
    """The row's tool definitions, as OpenAI's `tools` (or the older `functions`) give them."""
    key = column(config, "tools")
    if data.get(key) is None and isinstance(data.get("functions"), list):
        key, tools = "functions", [{"type": "function", "function": function} for function in data["functions"]]
    else:
        tools = data.get(key)
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise RowError(f"{key}: expected a list of tool definitions, got {json_type(tools)}")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]):
            raise RowError(f"{key}[{index}]: expected {{'type': 'function', 'function': {{'name', 'description', 'parameters'}}}}")
    return tools


def _question_from_system(messages: list[dict], indices: list[int]) -> None:
    """Where no user message comes before the first answer, the system messages after the first are the
    question: one user turn (in place)."""
    first = next((i for i, message in enumerate(messages) if message["role"] != "system"), len(messages))
    if first >= 2 and first < len(messages) and messages[first]["role"] == "assistant":
        question = "\n\n".join(message["content"] for message in messages[1:first])
        messages[1:first] = [{"role": "user", "content": question}]
        indices[1:first] = [indices[1]]


def _check_turn_order(messages: list[dict], indices: list[int], where: str, role_key: str) -> None:
    """User and assistant turns alternating from the user's, ending with the assistant's; an assistant's
    tool calls are answered by tool messages before it goes on. System messages may be anywhere."""
    turns = [(message, index) for message, index in zip(messages, indices) if message["role"] != "system"]
    if not turns:
        raise RowError("no user message")
    allowed, call_ids = ("user",), []
    for message, index in turns:
        role = message["role"]
        if role not in allowed:
            wanted = " or ".join(repr(name) for name in allowed)
            after_call = " (the result of the call before)" if allowed == ("tool",) else ""
            raise RowError(f"{where.format(index)}.{role_key}: expected {wanted} here{after_call}, got {role!r}")
        if role == "tool" and call_ids and message.get("tool_call_id", call_ids[0]) not in call_ids:
            raise RowError(f"{where.format(index)}.tool_call_id: {message['tool_call_id']!r} is not among the calls "
                           f"before ({', '.join(repr(call_id) for call_id in call_ids)})")
        if role == "assistant":
            call_ids = [call["id"] for call in message.get("tool_calls", ()) if "id" in call]
        allowed = _NEXT_ROLES[role] if role != "assistant" or "tool_calls" not in message else ("tool",)
    message, index = turns[-1]
    if message["role"] != "assistant":
        raise RowError(f"{where.format(index)}.{role_key}: the last message must be the assistant's, got {message['role']!r}")


# Who may speak after whom (an assistant that calls tools is followed by their results instead).
_NEXT_ROLES = {"user": ("assistant",), "assistant": ("user",), "tool": ("tool", "assistant")}
