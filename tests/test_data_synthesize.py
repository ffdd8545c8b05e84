import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import validate_recipe
from domaintune.data.synthesize import clean_reply, grounding, synthesize

DOCUMENT = """# Fees

The late payment fee at Northwind Bank is 25 dollars per missed instalment.

# Cards

A replacement debit card costs 10 dollars and arrives within five business days.
"""


def recipe(tmp_path, model_dir, **synthesize_config):
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "fees.md").write_text(DOCUMENT)
    return validate_recipe({
        "name": "syn",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir)},
        "data": {"format": "alpaca", "synthesize": {"documents": [str(docs)], **synthesize_config}},
        "training": {"threads": 1, "precision": "fp32"},
    })


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def stub(questions: list[str], answers: dict[str, str]):
    """A generator that asks `questions` in turn and answers each from `answers`."""
    asked = iter(questions)

    def generate(conversations):
        replies = []
        for conversation in conversations:
            content = conversation[0]["content"]
            if content.startswith("Answer the question"):
                replies.append(answers[content.rsplit("Question: ", 1)[1]])
            else:
                replies.append(next(asked))
        return replies

    return generate


def test_replies_and_grounding():
    assert clean_reply("**Question:** What is the fee?\n\nI hope this helps.", "Question") == "What is the fee?"
    assert clean_reply("  ", "Answer") == ""
    assert grounding("The fee is 25 dollars", "The late payment fee is 25 dollars.") == 1.0
    assert grounding("Interest is 7 percent yearly", "The late payment fee is 25 dollars.") == 0.0


def test_grounded_pairs_from_a_small_document_with_a_stub_generator(tmp_path, tiny_model_dir):
    generate = stub(
        ["Question: What is the late payment fee at Northwind Bank?", "How much does a replacement card cost?"],
        {
            "What is the late payment fee at Northwind Bank?": "The late payment fee is 25 dollars per missed instalment.",
            "How much does a replacement card cost?": "Replacement cards are free and arrive tomorrow by courier.",
        },
    )
    summary = synthesize(recipe(tmp_path, tiny_model_dir), generate=generate, console=Console(file=io.StringIO()))
    assert (summary["chunks"], summary["kept"], summary["removed"]) == (2, 1, 1)
    kept = read_jsonl(tmp_path / "runs" / "syn-synthetic.jsonl")
    assert kept[0]["instruction"] == "What is the late payment fee at Northwind Bank?"  # the recipe's format: alpaca
    assert kept[0]["output"].startswith("The late payment fee is 25 dollars")
    provenance = kept[0]["provenance"]
    assert provenance["file"].endswith("fees.md") and provenance["section"] == "Fees" and provenance["chunk"] == 1
    assert provenance["grounding"] == 1.0
    removed = read_jsonl(tmp_path / "runs" / "syn-synthetic.removed.jsonl")
    assert removed[0]["reason"].startswith("not grounded") and removed[0]["provenance"]["section"] == "Cards"


def test_repeated_questions_and_empty_replies_are_removed(tmp_path, tiny_model_dir):
    generate = stub(["What does it cost?", "what does it cost?"], {"What does it cost?": "25 dollars.", "what does it cost?": "10 dollars."})

    summary = synthesize(recipe(tmp_path, tiny_model_dir), generate=generate, console=Console(file=io.StringIO()))
    assert summary["removed_by_reason"] == {"duplicate question": 1}
    summary = synthesize(recipe(tmp_path, tiny_model_dir), generate=stub(["", "Why?"], {"Why?": ""}), console=Console(file=io.StringIO()))
    assert summary["removed_by_reason"] == {"empty reply": 2}
    copied = stub(["The late payment fee is 25 dollars.", "Why?"], {"The late payment fee is 25 dollars.": "25 dollars.", "Why?": "10 dollars."})
    summary = synthesize(recipe(tmp_path, tiny_model_dir), generate=copied, console=Console(file=io.StringIO()))
    assert summary["removed_by_reason"] == {"not a question": 1} and summary["kept"] == 1


def test_the_tiny_model_runs_end_to_end(tmp_path, tiny_model_dir):
    # A random model writes garbage: the plumbing must still produce both files and count every chunk.
    summary = synthesize(recipe(tmp_path, tiny_model_dir, max_new_tokens=8, max_chunks=1), console=Console(file=io.StringIO()))
    assert summary["chunks"] == 1 and summary["kept"] + summary["removed"] == 1
    assert (tmp_path / "runs" / "syn-synthetic.removed.jsonl").exists()


def test_cli_without_documents_is_a_user_error(tmp_path, tiny_model_dir):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: x\nmodel:\n  name: {tiny_model_dir}\ndata:\n  train: [{tmp_path / 'd.jsonl'}]\n")
    result = CliRunner().invoke(app, ["data", "synthesize", str(path)])
    assert result.exit_code == 2 and "data.synthesize.documents is empty" in result.output


@pytest.mark.slow
def test_bundled_model_writes_grounded_pairs(tmp_path):
    summary = synthesize(recipe(tmp_path, "smollm2-135m-instruct"), console=Console(file=io.StringIO()))
    assert summary["chunks"] == 2 and summary["kept"] + summary["removed"] == 2
    for row in read_jsonl(tmp_path / "runs" / "syn-synthetic.jsonl"):
        assert row["instruction"] and row["output"] and row["provenance"]["grounding"] >= 0.6
