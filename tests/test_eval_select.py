"""`domaintune select` ranks a model trained on the task above an untrained one."""
import json
import tempfile

from typer.testing import CliRunner

import domaintune
from domaintune.cli import app
from domaintune.core.chat import with_examples
from domaintune.evaluation.select import rank


def test_select_ranks_the_model_trained_for_the_task_first(tmp_path, tiny_recipe, tiny_model_dir, monkeypatch):
    run = domaintune.train(tiny_recipe)
    trained = domaintune.export_model(run.root)["merged"]
    scratch = tmp_path / "system-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    selection = domaintune.select(tiny_recipe, [str(tiny_model_dir), trained], samples=4, shots=1)
    assert list(scratch.iterdir()) == []  # the prepared sample (the user's data) does not stay behind
    assert selection["ranking"] == [trained, str(tiny_model_dir)]
    assert selection["recommendation"] == trained and selection["reasons"]
    first, second = selection["candidates"]
    assert first["loss"] < second["loss"]
    for candidate in selection["candidates"]:
        assert {"zero_shot", "few_shot", "seconds_per_item", "tokens_per_second", "memory_mb"} <= set(candidate)
        assert candidate["parameters"] > 0
    assert json.loads(open(selection["path"]).read())["recommendation"] == trained


def test_cli_select_needs_candidates_that_exist(tmp_path, tiny_recipe):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    result = CliRunner().invoke(app, ["select", str(recipe), "--candidates", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_few_shot_puts_examples_after_the_system_prompt():
    system = {"role": "system", "content": "S"}
    row = {"messages": [system, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    example = {"messages": [system, {"role": "user", "content": "eq"}, {"role": "assistant", "content": "ea"}]}
    assert [m["content"] for m in with_examples(row, [example])["messages"]] == ["S", "eq", "ea", "q", "a"]


def test_a_nearly_as_good_and_much_faster_model_is_recommended():
    def candidate(name, score, seconds):
        return {"model": name, "zero_shot": {"f1": score}, "few_shot": {"f1": score}, "loss": 1.0,
                "seconds_per_item": seconds, "memory_mb": 100.0, "tokens_per_second": 10.0}

    selection = rank([candidate("big", 0.81, 3.0), candidate("small", 0.80, 1.0)], "f1")
    assert selection["ranking"] == ["big", "small"] and selection["recommendation"] == "small"
    assert "3.0× faster" in " ".join(selection["reasons"])
