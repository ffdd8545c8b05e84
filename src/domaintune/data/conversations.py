"""Conversations as files hold them (chat's role/content, ShareGPT's from/value) read into canonical
messages, with their shape checked.

OpenAI chat files are read as OpenAI's fine-tuning guide writes them. System messages, wherever they
are, are merged in order into one leading system message: most bases' chat templates take a system
message only first (Llama 3, Mistral, Gemma), and a row must render alike on every base a run compares.
When no user message comes before the first answer, the system messages after the first one are
the question (evaluation sets put it in a second, named system message). A `name` is kept as a
"name: " prefix of the content, since chat templates drop the field and the reference answer must be
what the model is trained to write. The older `functions` / `function_call` / `function` role are
read as tools.
"""
from __future__ import annotations

import json

from domaintune.data.readers import json_type
from domaintune.data.row_errors import RowError

# OpenAI's roles; `developer` is its newer name for `system`, `function` the older one for `tool`.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_messages(data: dict, key: str, role_key: str, content_key: str, to_role) -> list[dict]:
    """The row's column `key`, a list of turns (chat's role/content or ShareGPT's from/value), as canonical
    messages with their shape checked."""
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
    # A null field is an absent one: Parquet (and files exported from `datasets`) give every message every field
    # any message has, so a user message arrives with `weight: null`. (A null role or content is still an error.)
    turn = {field: value for field, value in turn.items() if value is not None or field in (role_key, content_key)}
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


def read_tools(data: dict, key: str) -> list[dict] | None:
    """The row's tool definitions, as OpenAI's `tools` (column `key`) or the older `functions` give them."""
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
