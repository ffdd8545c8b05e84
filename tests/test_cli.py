import json

from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.workflows.quickstart import convert_ner_finance

runner = CliRunner()


def recipe_file(tmp_path, tiny_model_dir, data_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: cli\noutput_dir: {tmp_path / 'runs'}\nmodel:\n  name: {tiny_model_dir}\n"
        f"data:\n  train: [{data_path}]\n"
    )
    return path


def test_data_prepare_writes_splits_card_and_rejects(tmp_path, tiny_model_dir, qa_rows):
    data = tmp_path / "d.jsonl"
    lines = [json.dumps(row) for row in qa_rows]
    lines.insert(4, '{"messages": [{"role": "user"')  # line 5 is truncated JSON
    data.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "prepare", str(recipe_file(tmp_path, tiny_model_dir, data))])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    card = json.loads((run_dir / "data" / "data_card.json").read_text())
    assert card["totals"]["rejected"] == 1
    assert card["splits"]["train"] + card["splits"]["validation"] + card["splits"]["test"] == 60
    assert card["lengths"]["train"]["tokens"]["max"] > 0
    rejected = [json.loads(line) for line in (run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["line"] == 5 and rejected[0]["file"] == str(data)


def test_unreadable_file_exits_2_with_file_and_line_no_traceback(tmp_path, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    result = runner.invoke(app, ["data", "prepare", str(recipe_file(tmp_path, tiny_model_dir, data))])
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output and "line 2" in result.output
    assert "Traceback" not in result.output


def test_missing_run_directory_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_models_list_names_the_bundled_models():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "smollm2-135m" in result.output and "minilm-l6" in result.output


def test_quickstart_conversion_keeps_sentence_and_answer_with_a_short_prompt():
    source = {
        "input": [
            {"role": "system", "content": "Long instructions ... Provide your chain of thought first."},
            {"role": "user", "content": "Bank lends to Borrower ."},
        ],
        "ideal": "[Bank - ORGANIZATION, Borrower - PERSON]",
    }
    (row,) = convert_ner_finance([json.dumps(source)])
    system, user, assistant = row["messages"]
    assert "chain of thought" not in system["content"]
    assert user["content"] == "Bank lends to Borrower ."
    assert assistant["content"] == "[Bank - ORGANIZATION, Borrower - PERSON]"
