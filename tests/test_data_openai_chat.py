"""OpenAI chat files as OpenAI's fine-tuning guide writes them: several system messages, `name` fields,
`weight: 0` turns, function calling (`tools`, `tool_calls`, `tool` messages, and the older `functions`),
and the console's one-line summary when most of a file is rejected for one reason."""
import io
import json

import pytest
from rich.console import Console
from transformers import AutoTokenizer
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import DataConfig
from domaintune.core.chat import IGNORE_INDEX, count_tokens, encode_row, final_answer, prompt_text, render
from domaintune.core.errors import DomaintuneError
from domaintune.data.formats import RowError, to_canonical
from domaintune.data.prepare import prepare_dataset

MARV = "Marv is a factual chatbot that is also sarcastic."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "format"],
        },
    },
}
WEATHER_CALL = {
    "id": "call_id",
    "type": "function",
    "function": {"name": "get_current_weather", "arguments": "{\"location\": \"San Francisco, USA\", \"format\": \"celsius\"}"},
}
# The rows of OpenAI's fine-tuning guide (chat, multi-turn with weight, function calling), its cookbook's
# few-shot prompt (named system messages), its legacy function calling, and the invoice rows.
GUIDE_ROWS = [
    {"messages": [{"role": "system", "content": MARV}, {"role": "user", "content": "What's the capital of France?"},
                  {"role": "assistant", "content": "Paris, as if everyone doesn't know that already."}]},
    {"messages": [{"role": "system", "content": MARV}, {"role": "user", "content": "What's the capital of France?"},
                  {"role": "assistant", "content": "Paris", "weight": 0},
                  {"role": "user", "content": "Can you be more sarcastic?"},
                  {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1}]},
    {"messages": [{"role": "user", "content": "What is the weather in San Francisco?"},
                  {"role": "assistant", "tool_calls": [WEATHER_CALL]}],
     "parallel_tool_calls": False, "tools": [WEATHER_TOOL]},
    {"messages": [{"role": "user", "content": "How warm is it in San Francisco?"},
                  {"role": "assistant", "tool_calls": [WEATHER_CALL]},
                  {"role": "tool", "tool_call_id": "call_id", "content": "21.0"},
                  {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA"}],
     "tools": [WEATHER_TOOL]},
    {"messages": [{"role": "system", "content": "You translate corporate jargon into plain English."},
                  {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
                  {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
                  {"role": "user", "name": "customer", "content": "This late pivot means we don't have time to boil the ocean."},
                  {"role": "assistant", "content": "We changed course late, so we cannot do everything."}]},
    {"messages": [{"role": "user", "content": "Is it raining in Oslo?"},
                  {"role": "assistant", "function_call": {"name": "get_current_weather",
                                                          "arguments": "{\"location\": \"Oslo, Norway\", \"format\": \"celsius\"}"}}],
     "functions": [WEATHER_TOOL["function"]]},
]


def invoice_row(number: int, with_user: bool = False) -> dict:
    """The issue's failing rows: a second system message, with a name, carries the question."""
    question = {"role": "system", "name": "invoice", "content": f"Invoice INV-{number}, total 1{number}.00 EUR. What is the total?"}
    messages = [{"role": "system", "content": "Extract the requested invoice field as JSON."}, question]
    if with_user:
        messages.append({"role": "user", "content": "Answer now."})
    return {"messages": messages + [{"role": "assistant", "content": json.dumps({"total": f"1{number}.00"})}]}


def chat(row: dict) -> dict:
    return to_canonical(row, "chat", DataConfig())


def tokenizer_of(folder):
    return AutoTokenizer.from_pretrained(folder)


def supervised_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX])


# --- the guide's file through `data prepare` --------------------------------------------


def test_openai_guide_file_loads_through_data_prepare_without_rejected_rows(tmp_path, tiny_model_dir):
    rows = GUIDE_ROWS + [invoice_row(n) for n in range(3)] + [invoice_row(9, with_user=True)]
    data = tmp_path / "openai.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: openai\noutput_dir: {tmp_path / 'runs'}\nmodel:\n  name: {tiny_model_dir}\n"
        f"data:\n  train: [{data}]\n  split: {{validation: 0.0, test: 0.0}}\n"
    )
    result = CliRunner().invoke(app, ["data", "prepare", str(recipe)])
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "runs").iterdir()) / "data"
    card = json.loads((folder / "data_card.json").read_text())
    assert card["files"][0]["format"] == "chat"
    assert card["totals"]["rejected"] == 0 and card["totals"]["removed"] == 0
    assert card["splits"]["train"] == len(rows)
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    tool_rows = [row for row in train if row.get("tools")]
    assert len(tool_rows) == 3 and all(row["tools"][0]["function"]["name"] == "get_current_weather" for row in tool_rows)


# --- several system messages and names --------------------------------------------------


def test_system_messages_merge_in_order_into_one_leading_message_with_their_names():
    row = chat(GUIDE_ROWS[4])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == (
        "You translate corporate jargon into plain English.\n\n"
        "example_user: New synergies will help drive top-line growth.\n\n"
        "example_assistant: Things working well together will increase revenue."
    )
    late = chat({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "Be brief."},
                              {"role": "assistant", "content": "b"}]})
    assert late["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                                {"role": "assistant", "content": "b"}]
    developer = chat({"messages": [{"role": "developer", "content": "Be brief."}, *late["messages"][1:]]})
    assert developer["messages"] == late["messages"]  # OpenAI's newer name for the system role


def test_name_fields_are_kept_as_a_prefix_of_the_content():
    row = chat(GUIDE_ROWS[4])
    assert row["messages"][1]["content"] == "customer: This late pivot means we don't have time to boil the ocean."
    assert chat({"messages": [{"role": "user", "content": "Hi", "name": None},
                              {"role": "assistant", "content": "Yo", "name": "bot"}]})["messages"][1]["content"] == "bot: Yo"


def test_invoice_rows_with_the_question_in_a_second_named_system_message_load():
    row = chat(invoice_row(1))
    assert row["messages"] == [
        {"role": "system", "content": "Extract the requested invoice field as JSON."},
        {"role": "user", "content": "invoice: Invoice INV-1, total 11.00 EUR. What is the total?"},
        {"role": "assistant", "content": '{"total": "11.00"}'},
    ]
    with_user = chat(invoice_row(2, with_user=True))["messages"]
    assert [m["role"] for m in with_user] == ["system", "user", "assistant"]
    assert with_user[0]["content"].endswith("invoice: Invoice INV-2, total 12.00 EUR. What is the total?")


# --- weight -----------------------------------------------------------------------------


def test_weight_zero_is_kept_on_the_turn_and_weight_one_or_absent_is_the_default():
    messages = chat(GUIDE_ROWS[1])["messages"]
    assert messages[2] == {"role": "assistant", "content": "Paris", "weight": 0}
    assert messages[4] == {"role": "assistant", "content": "Paris, as if everyone doesn't know that already."}


@pytest.mark.parametrize(
    "messages, reason",
    [
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0.5}],
         "messages[1].weight: expected 0 (not trained on) or 1 (trained on), got 0.5"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": "0"}],
         "messages[1].weight: expected 0 (not trained on) or 1 (trained on), got '0'"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": True}],
         "messages[1].weight: expected 0 (not trained on) or 1 (trained on), got True"),
        ([{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}],
         "messages[0].weight: only assistant messages have a weight"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}],
         "messages: every assistant message has weight 0, so there is nothing to train on"),
    ],
)
def test_weights_other_than_0_or_1_are_rejected_naming_the_field(messages, reason):
    with pytest.raises(RowError) as caught:
        chat({"messages": messages})
    assert caught.value.reason == reason


def test_weight_zero_turns_are_masked_and_the_others_supervised(tiny_model_dir):
    tokenizer = tokenizer_of(tiny_model_dir)
    row = chat(GUIDE_ROWS[1])
    supervised = supervised_text(tokenizer, encode_row(tokenizer, row, max_length=256))
    assert supervised == "Paris, as if everyone doesn't know that already.<|im_end|>\n"
    both = chat({"messages": [{**m, "weight": 1} if m["role"] == "assistant" else m for m in GUIDE_ROWS[1]["messages"]]})
    assert supervised_text(tokenizer, encode_row(tokenizer, both, max_length=256)).startswith("Paris<|im_end|>\nParis, as")


# --- function calling -------------------------------------------------------------------


def test_tool_calls_become_canonical_calls_with_parsed_arguments():
    row = chat(GUIDE_ROWS[3])
    assert row["tools"] == [WEATHER_TOOL]
    call = {"id": "call_id", "type": "function",
            "function": {"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", "format": "celsius"}}}
    assert row["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert row["messages"][2] == {"role": "tool", "content": "21.0", "tool_call_id": "call_id"}


def test_legacy_functions_and_function_call_read_as_tools():
    row = chat(GUIDE_ROWS[5])
    assert row["tools"] == [{"type": "function", "function": WEATHER_TOOL["function"]}]
    assert row["messages"][1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Oslo, Norway", "format": "celsius"}}}
    ]


def call(arguments) -> dict:
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": arguments}}]}


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"messages": [{"role": "user", "content": "a"}, call("{oops")]},
         "messages[1].tool_calls[0].function.arguments: not valid JSON (Expecting property name enclosed in double quotes)"),
        ({"messages": [{"role": "user", "content": "a"}, call("[1]")]},
         "messages[1].tool_calls[0].function.arguments: expected a JSON object, got list"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"type": "function"}]}]},
         "messages[1].tool_calls[0]: expected {'type': 'function', 'function': {'name', 'arguments'}}"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "function_call": {"name": "f", "arguments": "{"}}]},
         "messages[1].function_call.arguments: not valid JSON (Expecting property name enclosed in double quotes)"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": []}]},
         "messages[1].tool_calls: expected a list of tool calls, got an empty list"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "b"}]},
         "messages[1].role: expected 'assistant' here, got 'tool'"),
        ({"messages": [{"role": "user", "content": "a"}, call("{}"), {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]},
         "messages[2].role: expected 'tool' here (the result of the call before), got 'user'"),
        ({"messages": [{"role": "user", "content": "a"}, {**call("{}"), "tool_calls": [{**call("{}")["tool_calls"][0], "id": "c1"}]},
                       {"role": "tool", "tool_call_id": "c2", "content": "1"}, {"role": "assistant", "content": "b"}]},
         "messages[2].tool_call_id: 'c2' is not among the calls before ('c1')"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": {"f": 1}},
         "tools: expected a list of tool definitions, got object"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": [{"type": "function"}]},
         "tools[0]: expected {'type': 'function', 'function': {'name', 'description', 'parameters'}}"),
    ],
)
def test_malformed_function_calling_rows_say_why(row, reason):
    with pytest.raises(RowError) as caught:
        chat(row)
    assert caught.value.reason == reason


def test_tool_calls_render_as_text_and_are_supervised_where_the_template_has_no_tool_support(tiny_model_dir):
    tokenizer = tokenizer_of(tiny_model_dir)  # SmolLM2's ChatML template ignores `tools` and `tool_calls`
    row = chat(GUIDE_ROWS[3])
    text = render(tokenizer, row["messages"], tools=row["tools"])
    assert text.startswith("<|im_start|>system\nYou can call these tools:\n<tools>\n" + json.dumps(WEATHER_TOOL["function"]))
    expected_call = '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", "format": "celsius"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{expected_call}<|im_end|>" in text
    assert "<|im_start|>user\n<tool_response>\n21.0\n</tool_response><|im_end|>" in text
    encoded = encode_row(tokenizer, row, max_length=512)
    supervised = supervised_text(tokenizer, encoded)
    assert supervised == f"{expected_call}<|im_end|>\nIt is 21 degrees celsius in San Francisco, CA<|im_end|>\n"
    assert len(encoded["input_ids"]) == count_tokens(tokenizer, row)
    assert final_answer(chat(GUIDE_ROWS[2])) == expected_call
    # Evaluation prompts see the tools too.
    assert "get_current_weather" in prompt_text(tokenizer, row["messages"], tools=row["tools"])


def test_evaluation_prompts_offer_the_tools_and_expect_the_call(tiny_model_dir):
    from domaintune.evaluation.harness import _chat_docs

    row = chat(GUIDE_ROWS[2])
    [doc] = _chat_docs(tokenizer_of(tiny_model_dir), [row])
    assert "<tools>" in doc["prompt"] and doc["prompt"].endswith("<|im_start|>assistant\n")
    assert doc["target"] == final_answer(row) and doc["target"].startswith("<tool_call>")


# A small template with tool support, written the way Qwen's and Hermes' are.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for tool in tools %} {{ tool.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% for call in message.tool_calls or [] %}CALL {{ call.function.name }} {{ call.function.arguments | tojson }}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_templates_with_tool_support_render_tools_and_calls_themselves(tiny_model_dir):
    tokenizer = tokenizer_of(tiny_model_dir)
    tokenizer.chat_template = TOOL_TEMPLATE
    row = chat(GUIDE_ROWS[3])
    text = render(tokenizer, row["messages"], tools=row["tools"])
    assert text.startswith("<|im_start|>system\nTOOLS: get_current_weather<|im_end|>\n")
    assert "<tool_call>" not in text and "<|im_start|>tool\n21.0<|im_end|>" in text
    supervised = supervised_text(tokenizer, encode_row(tokenizer, row, max_length=512))
    assert supervised == ('CALL get_current_weather {"location": "San Francisco, USA", "format": "celsius"}<|im_end|>\n'
                          "It is 21 degrees celsius in San Francisco, CA<|im_end|>\n")


# --- a file mostly rejected for one reason ----------------------------------------------


def prepare(tmp_path, rows: list[dict], out: io.StringIO) -> dict:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    console = Console(file=out, width=300)
    return prepare_dataset(DataConfig(train=[str(path)], split={"validation": 0.0, "test": 0.0}), tmp_path / "out", seed=0, console=console)


def two_questions(i: int, at: int) -> dict:
    """A row with two user messages in a row, at position `at` (1 or 3)."""
    turns = [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}] * 3
    turns.insert(at, {"role": "user", "content": f"again {i}"})
    return {"messages": turns}


def test_a_file_mostly_rejected_for_one_reason_says_it_once_with_a_hint(tmp_path):
    good = [{"messages": [{"role": "user", "content": f"Question {i}"}, {"role": "assistant", "content": f"Answer {i}"}]} for i in range(4)]
    bad = [two_questions(i, 1 if i % 2 else 3) for i in range(8)]
    out = io.StringIO()
    card = prepare(tmp_path, good + bad + [{"messages": "x"}], out)
    printed = out.getvalue()
    assert printed.count("rejected for one reason") == 1, printed
    assert "rows.jsonl: 8 of 13 rows rejected for one reason: messages[3].role: expected 'assistant' here, got 'user' (line 5, and 7 more like it)" in printed
    assert "hint: user and assistant turns must alternate" in printed
    assert printed.count("expected 'assistant' here") == 1
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 9 and card["totals"]["rejected"] == 9
    assert [r["reason"] for r in rejected[:2]] == ["messages[3].role: expected 'assistant' here, got 'user'",
                                                   "messages[1].role: expected 'assistant' here, got 'user'"]


def test_few_rejections_are_not_summarised(tmp_path):
    good = [{"messages": [{"role": "user", "content": f"Question {i}"}, {"role": "assistant", "content": f"Answer {i}"}]} for i in range(3)]
    out = io.StringIO()
    prepare(tmp_path, good + [two_questions(i, 1) for i in range(4)], out)  # 4 of 7: under 5 rows
    assert "rejected for one reason" not in out.getvalue()


def test_a_file_rejected_entirely_names_the_reason_and_the_fix_in_the_error(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}]} for i in range(6)]
    with pytest.raises(DomaintuneError) as caught:
        prepare(tmp_path, rows, io.StringIO())
    message = str(caught.value)
    assert message.startswith("no usable rows: 6 read, 6 rejected")
    assert "rows.jsonl: 6 of 6 rows rejected for one reason: messages[0].role: the last message must be the assistant's" in message
    assert "hint: each row ends with the answer the model learns" in message


def test_a_rows_question_is_its_last_user_turn_or_the_message_before_the_answer():
    from domaintune.core.chat import question_text

    tool_chat = [{"role": "user", "content": "Rate of loan A-7?"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "rate", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": '{"rate": 5}'},
                 {"role": "assistant", "content": "5 percent."}]
    assert question_text(tool_chat) == "Rate of loan A-7?"
    # The invoices evaluation set: the email and the question in two system messages, no user turn.
    two_systems = [{"role": "system", "content": "EMAIL ..."},
                   {"role": "system", "name": "example_user", "content": "Q: Find the $ value paid to Deel?"},
                   {"role": "assistant", "content": "$8,803.15"}]
    assert question_text(two_systems) == "Q: Find the $ value paid to Deel?"


def test_a_parquet_chat_file_whose_messages_all_have_every_field_loads(tmp_path):
    """Parquet gives every message every field some message has: a user turn arrives with `weight: null`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "draft", "weight": 0},
                          {"role": "user", "content": "again"}, {"role": "assistant", "content": "final", "weight": 1}]}]
    rows += [{"messages": [{"role": "user", "content": f"Hello {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
             for i in range(2)]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert pa.Table.from_pylist(rows).to_pylist()[1]["messages"][0]["weight"] is None
    card = prepare_dataset(DataConfig(train=[str(path)], split={"validation": 0.0, "test": 0.0}), tmp_path / "out",
                           seed=0, console=Console(file=io.StringIO()))
    assert card["totals"]["rejected"] == 0 and card["splits"]["train"] == 3


def test_the_token_count_of_a_row_includes_its_tool_calls(tmp_path, tiny_model_dir):
    """Two rows that differ only in a call's arguments have different lengths (the count was cached by content)."""
    def booking(arguments: dict) -> dict:
        return {"messages": [
            {"role": "user", "content": "Book a table for tonight"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "book", "arguments": json.dumps(arguments)}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}, {"role": "assistant", "content": "Done, booked."}]}

    long_call = booking({"note": " ".join(f"word{i}" for i in range(600))})
    for order in ([booking({"n": 2}), long_call], [long_call, booking({"n": 2})]):
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in order), encoding="utf-8")
        config = DataConfig(train=[str(path)], max_tokens=512, split={"validation": 0.0, "test": 0.0})
        card = prepare_dataset(config, tmp_path / "out", seed=0, console=Console(file=io.StringIO()),
                               count_tokens=lambda row: count_tokens(tokenizer_of(tiny_model_dir), row))
        assert card["splits"]["train"] == 1 and card["totals"]["removed"] == 1, order
