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

Chat and ShareGPT turns, OpenAI's fine-tuning features included, are read by conversations.py.

A row that does not fit its format raises `RowError` (the row is rejected, the run goes on);
a file that cannot be in the format at all raises `DomaintuneError`.
"""
from __future__ import annotations

import difflib
import functools
import json
import math
import string
from collections import Counter
from pathlib import Path

from domaintune.config import DataConfig
from domaintune.core.entities import entity_list
from domaintune.core.errors import DomaintuneError
from domaintune.data.conversations import CHAT_ROLES, SHAREGPT_ROLES, read_messages, read_tools
from domaintune.data.preferences import PREFERENCE_FORMATS, to_preference_row
from domaintune.data.readers import RawRow, json_type
from domaintune.data.row_errors import RowError

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
# Every canonical column name data.columns may map: the formats' required columns and the optional ones.
COLUMN_NAMES: tuple[str, ...] = tuple(dict.fromkeys(
    [name for names in FORMATS.values() for name in names] + ["input", "tools"]))


def column(config: DataConfig, name: str) -> str:
    """The user's name for a canonical column."""
    return config.columns.get(name, name)


def check_columns(config: DataConfig) -> None:
    """Refuse a data.columns key that names no canonical column: a typo would be silently ignored."""
    for name in config.columns:
        if name not in COLUMN_NAMES:
            close = difflib.get_close_matches(name, COLUMN_NAMES, n=1)
            raise DomaintuneError(
                f"data.columns.{name}: {name!r} is not a column of any format"
                + (f"; did you mean {close[0]!r}?" if close else ".")
                + f" The keys of data.columns are the formats' column names ({', '.join(COLUMN_NAMES)}), "
                "the values your file's names for them"
            )


def missing_columns(fmt: str, keys, config: DataConfig) -> list[str]:
    return [column(config, name) for name in FORMATS[fmt] if column(config, name) not in keys]


def detect_format(keys, config: DataConfig) -> str | None:
    """The most specific format whose columns are all among `keys`."""
    return next((fmt for fmt in FORMATS if not missing_columns(fmt, keys, config)), None)


def detect_rows_format(datas: list[dict], config: DataConfig) -> str | None:
    """The format most rows fit, or None when none fits any. One odd row (a first row missing its label)
    must not decide for the file: the rows that do not fit the majority's format are rejected with their
    reason. A tie goes to the more specific format, whose rows would otherwise lose a column silently."""
    counts = Counter(fmt for data in datas if (fmt := detect_format(data, config)))
    if not counts:
        return None
    return max(FORMATS, key=lambda fmt: (counts[fmt], -list(FORMATS).index(fmt)))


def resolve_format(path: Path, rows: list[RawRow], config: DataConfig) -> str:
    """The file's format: declared in the config, or detected as the one most of its rows fit.

    CSV and Parquet rows all share the header, so a missing column is a file error; JSON(L)
    rows may differ, so the file is wrong only when no row at all has the columns (the
    others are rejected one by one). A file none of whose rows parse is wrong as a whole.
    """
    check_columns(config)
    parsed = [row.data for row in rows if row.data is not None]
    if not parsed:
        first = rows[0]
        raise DomaintuneError(f"{path}: no row could be read (line {first.line}: {first.error})")
    where = f"{path} line 1" if path.suffix.lower() == ".csv" else str(path)
    if config.format == "auto":
        fmt = detect_rows_format(parsed, config)
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
        messages = read_messages(data, column(config, "messages"), "role", "content", CHAT_ROLES.get)
        tools = read_tools(data, column(config, "tools"))
        if tools:
            extra["tools"] = tools
    elif fmt == "sharegpt":
        messages = read_messages(data, column(config, "conversations"), "from", "value", SHAREGPT_ROLES.get)
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
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON's NaN/Infinity, pandas' missing value: "nan" is no answer
            raise RowError(f"column {key!r}: expected a label, got {json.dumps(value)}")
        if value.is_integer():
            return str(int(value))  # a Parquet/pandas integer column with a null in it is float: 1.0 is label 1
    if isinstance(value, (str, int, float)):
        return str(value)
    if key not in data:
        raise RowError(f"missing column {key!r}")
    raise RowError(f"column {key!r}: expected a label, got {json_type(value)}")


def _label_prompt(config: DataConfig, text: str) -> str:
    template = config.label_prompt
    problem = _label_template_problem(template)
    if problem is None:
        try:
            return template.format(text=text)
        except ValueError as error:  # a format spec str cannot take, as in {text:d}
            problem = f"is not a valid template ({error})"
    # A recipe mistake, not a row's: stop the run instead of rejecting every row.
    raise DomaintuneError(f"data.label_prompt {template!r} {problem}; "
                          "use {text} for the row's text and {{ }} for literal braces")


@functools.lru_cache(maxsize=16)
def _label_template_problem(template: str) -> str | None:
    """What is wrong with a label prompt, or None: it must show the row's text, and nothing but it."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        return f"is not a valid template ({error})"
    other = next((field for field in fields if field != "text"), None)
    if other is not None:
        return f"has {{{other}}}, which is not the row's text"
    if not fields:
        # Every row's prompt would be this same text: the rows would differ only by their labels
        # (and be removed as duplicates of one another).
        return "has no {text}, so every row's prompt would be the same"
    return None


def _turn(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


