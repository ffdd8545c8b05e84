from pathlib import Path

import pytest

from domaintune.config import DataConfig
from domaintune.core.errors import DomaintuneError
from domaintune.data.formats import RowError, detect_format, resolve_format, to_canonical
from domaintune.data.readers import RawRow


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


@pytest.mark.parametrize(
    "fmt, data, messages",
    [
        (
            "chat",
            {"messages": [{"role": "user", "content": "Hi", "name": "ann"}, {"role": "assistant", "content": "Hello"}]},
            chat(("user", "ann: Hi"), ("assistant", "Hello")),
        ),
        (
            "sharegpt",
            {"conversations": [{"from": "system", "value": "Be brief"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
            chat(("system", "Be brief"), ("user", "Hi"), ("assistant", "Yo")),
        ),
        ("alpaca", {"instruction": "Sum", "input": "2 2", "output": "4"}, chat(("user", "Sum\n\n2 2"), ("assistant", "4"))),
        ("alpaca", {"instruction": "Greet", "input": "", "output": "Hi"}, chat(("user", "Greet"), ("assistant", "Hi"))),
        ("alpaca", {"instruction": "Greet", "output": "Hi"}, chat(("user", "Greet"), ("assistant", "Hi"))),
        ("prompt_completion", {"prompt": "2+2=", "completion": "4"}, chat(("user", "2+2="), ("assistant", "4"))),
    ],
)
def test_conversation_formats(fmt, data, messages):
    assert to_canonical(data, fmt, DataConfig()) == {"messages": messages, "label": None}


def test_text_rows_stay_raw_text():
    assert to_canonical({"text": "A document."}, "text", DataConfig()) == {"text": "A document."}


def test_labelled_rows_become_a_question_answered_by_the_label():
    config = DataConfig(label_prompt="Sentiment of: {text}")
    assert to_canonical({"text": "great", "label": "pos"}, "labelled", config) == {
        "messages": chat(("user", "Sentiment of: great"), ("assistant", "pos")),
        "label": "pos",
    }
    assert to_canonical({"text": "meh", "label": 0}, "labelled", config)["label"] == "0"


def test_column_mapping_reads_the_users_names():
    config = DataConfig(columns={"instruction": "question", "output": "answer"})
    assert detect_format({"question", "answer"}, config) == "alpaca"
    row = to_canonical({"question": "Why?", "answer": "Because."}, "alpaca", config)
    assert row["messages"] == chat(("user", "Why?"), ("assistant", "Because."))
    with pytest.raises(RowError, match="missing column 'answer'"):
        to_canonical({"question": "Why?"}, "alpaca", config)


def test_system_prompt_is_added_only_where_missing():
    config = DataConfig(system_prompt="You are a bank clerk.")
    added = to_canonical({"prompt": "Hi", "completion": "Hello"}, "prompt_completion", config)
    assert added["messages"][0] == {"role": "system", "content": "You are a bank clerk."}
    own = {"messages": chat(("system", "Mine"), ("user", "Hi"), ("assistant", "Hello"))}
    assert to_canonical(own, "chat", config)["messages"] == own["messages"]


@pytest.mark.parametrize(
    "fmt, data, reason",
    [
        ("alpaca", {"instruction": "x"}, "missing column 'output'"),
        ("alpaca", {"instruction": "x", "output": None}, "column 'output' is empty (null)"),
        ("prompt_completion", {"prompt": "x", "completion": 4}, "column 'completion': expected text, got number"),
        ("chat", {"messages": []}, "messages: no messages"),
        ("chat", {"messages": "hi"}, "messages: expected a list of messages, got text"),
        ("chat", {"messages": chat(("user", "a"), ("assistant", "b"), ("bot", "c"))}, "messages[2].role: unknown role 'bot'"),
        ("chat", {"messages": chat(("user", "a"))}, "messages[0].role: the last message must be the assistant's, got 'user'"),
        ("chat", {"messages": chat(("user", "a"), ("user", "b"), ("assistant", "c"))}, "messages[1].role: expected 'assistant' here, got 'user'"),
        ("chat", {"messages": chat(("system", "a"), ("assistant", "b"))}, "messages[1].role: expected 'user' here, got 'assistant'"),
        ("chat", {"messages": chat(("system", "a"))}, "no user message"),
        ("chat", {"messages": [{"role": "user"}]}, "messages[0]: missing 'content'"),
        ("chat", {"messages": [{"role": "user", "content": None}]}, "messages[0].content: expected text, got null"),
        ("sharegpt", {"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from: unknown role 'bot'"),
        ("labelled", {"text": "x", "label": None}, "column 'label': expected a label, got null"),
        ("text", {"text": ["a"]}, "column 'text': expected text, got list"),
    ],
)
def test_rows_that_do_not_fit_say_why(fmt, data, reason):
    with pytest.raises(RowError) as caught:
        to_canonical(data, fmt, DataConfig())
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "keys, fmt",
    [
        ({"messages", "id"}, "chat"),
        ({"conversations"}, "sharegpt"),
        ({"instruction", "input", "output"}, "alpaca"),
        ({"prompt", "completion"}, "prompt_completion"),
        ({"text", "label"}, "labelled"),
        ({"text", "meta"}, "text"),
        ({"question", "reply"}, None),
    ],
)
def test_detect_format(keys, fmt):
    assert detect_format(keys, DataConfig()) == fmt


def rows(path: str, *datas: dict | None) -> list[RawRow]:
    return [RawRow(path, i + 2, data, None if data else "bad") for i, data in enumerate(datas)]


def test_auto_detection_ignores_rows_that_fit_no_format():
    raw = rows("d.jsonl", None, {"instruction": "x"}, {"instruction": "y", "output": "z"})
    assert resolve_format(Path("d.jsonl"), raw, DataConfig()) == "alpaca"


def test_failed_detection_lists_the_formats_and_their_columns():
    with pytest.raises(DomaintuneError) as caught:
        resolve_format(Path("qa.csv"), rows("qa.csv", {"question": "q", "reply": "r"}), DataConfig())
    message = str(caught.value)
    assert message.startswith("qa.csv line 1: cannot tell the data format from the columns (question, reply)")
    assert "alpaca (instruction, output)" in message and "prompt_completion (prompt, completion)" in message


def test_csv_header_missing_a_column_of_the_declared_format():
    config = DataConfig(format="alpaca", columns={"output": "answer"})
    with pytest.raises(DomaintuneError, match=r"^qa\.csv line 1: no column 'answer', which format 'alpaca' needs$"):
        resolve_format(Path("qa.csv"), rows("qa.csv", {"instruction": "q", "output": "a"}), config)


def test_jsonl_where_no_row_has_the_declared_columns():
    config = DataConfig(format="prompt_completion")
    with pytest.raises(DomaintuneError, match=r"^d\.jsonl: no row has the column\(s\) 'prompt', 'completion'"):
        resolve_format(Path("d.jsonl"), rows("d.jsonl", {"prompt": "p"}, {"text": "t"}), config)
    # One row with the columns is enough: the others are rejected one by one.
    assert resolve_format(Path("d.jsonl"), rows("d.jsonl", {"prompt": "p"}, {"prompt": "p", "completion": "c"}), config)


def test_a_file_none_of_whose_rows_parse_is_an_error():
    with pytest.raises(DomaintuneError, match=r"^d\.jsonl: no row could be read \(line 2: bad\)"):
        resolve_format(Path("d.jsonl"), rows("d.jsonl", None, None), DataConfig())


def test_bad_label_prompt_is_a_recipe_error():
    with pytest.raises(DomaintuneError, match="data.label_prompt"):
        to_canonical({"text": "x", "label": "y"}, "labelled", DataConfig(label_prompt="{txt}"))


def test_auto_detection_takes_the_format_most_rows_fit_and_the_others_are_rejected():
    labelled = [{"text": f"review {i}", "label": "pos"} for i in range(6)]
    raw = rows("d.jsonl", {"text": "first review, label forgotten"}, *labelled)
    assert resolve_format(Path("d.jsonl"), raw, DataConfig()) == "labelled"
    with pytest.raises(RowError, match="missing column 'label'"):
        to_canonical(raw[0].data, "labelled", DataConfig())
    # A tie goes to the more specific format, whose rows would otherwise lose a column.
    assert resolve_format(Path("d.jsonl"), rows("d.jsonl", {"text": "a"}, {"text": "b", "label": "x"}),
                          DataConfig()) == "labelled"


@pytest.mark.parametrize("template, expected", [
    ("Classify the sentiment of the review.", r"data\.label_prompt .* has no \{text\}"),
    ("Classify: {text.x}", r"data\.label_prompt .*\{text\.x\}"),
    ("Classify: {text[0]}", r"data\.label_prompt .*\{text\[0\]\}"),
    ("Classify: {} {text}", r"data\.label_prompt .*\{\}"),
    ("Classify: {text:d}", r"data\.label_prompt .* is not a valid template"),
])
def test_a_label_prompt_that_cannot_show_the_rows_text_is_a_recipe_error(template, expected):
    with pytest.raises(DomaintuneError, match=expected):
        to_canonical({"text": "x", "label": "y"}, "labelled", DataConfig(label_prompt=template))


def test_a_label_prompt_may_format_the_text_and_escape_braces():
    config = DataConfig(label_prompt='Reply like {{"label": ...}}: {text!r}')
    assert to_canonical({"text": "x", "label": "y"}, "labelled", config)["messages"][0]["content"] == \
        "Reply like {\"label\": ...}: 'x'"


@pytest.mark.parametrize("value, reason", [
    (float("nan"), "column 'label': expected a label, got NaN"),
    (float("inf"), "column 'label': expected a label, got Infinity"),
    (float("-inf"), "column 'label': expected a label, got -Infinity"),
])
def test_a_label_that_is_not_a_number_is_rejected(value, reason):
    with pytest.raises(RowError) as caught:
        to_canonical({"text": "x", "label": value}, "labelled", DataConfig())
    assert caught.value.reason == reason


def test_a_whole_float_label_reads_as_the_integer_it_is():
    # A Parquet/pandas integer column with a null in it is float: its 1 arrives as 1.0.
    assert to_canonical({"text": "x", "label": 1.0}, "labelled", DataConfig())["label"] == "1"
    assert to_canonical({"text": "x", "label": 0.5}, "labelled", DataConfig())["label"] == "0.5"


def test_an_unknown_name_in_data_columns_is_a_recipe_error():
    config = DataConfig(columns={"instruction": "q", "imput": "ctx", "output": "a"})
    with pytest.raises(DomaintuneError, match=r"data\.columns\.imput: .*did you mean 'input'"):
        resolve_format(Path("d.jsonl"), rows("d.jsonl", {"q": "x", "ctx": "y", "a": "z"}), config)
    config = DataConfig(columns={"instruction": "q", "input": "ctx", "output": "a", "tools": "t"})
    assert resolve_format(Path("d.jsonl"), rows("d.jsonl", {"q": "x", "ctx": "y", "a": "z"}), config) == "alpaca"
