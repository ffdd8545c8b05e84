import json

import pytest
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.config import apply_overrides, load_recipe, validate_recipe
from domaintune.core.errors import DomaintuneError

runner = CliRunner()


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_cpu_sized():
    recipe = validate_recipe({})
    assert recipe.model.name == "smollm2-135m-instruct"
    assert recipe.method.name == "lora"
    assert recipe.training.batch_size <= 8
    assert recipe.model.trust_remote_code is False


def test_wrong_type_names_field_path(tmp_path):
    with pytest.raises(DomaintuneError) as error:
        load_recipe(write(tmp_path, "training:\n  lr: fast\n"))
    assert "training.lr: input should be a valid number" in str(error.value)


def test_unknown_key_names_field_path(tmp_path):
    with pytest.raises(DomaintuneError) as error:
        load_recipe(write(tmp_path, "training:\n  epochz: 2\n"))
    assert "training.epochz: unknown key" in str(error.value)


def test_unknown_method_option_is_rejected():
    with pytest.raises(DomaintuneError) as error:
        validate_recipe({"method": {"name": "lora", "rank": 8}})
    assert "method.rank: unknown key" in str(error.value)


def test_unknown_method_lists_known_ones():
    with pytest.raises(DomaintuneError) as error:
        validate_recipe({"method": {"name": "magic"}})
    assert "'lora'" in str(error.value) and "'full'" in str(error.value)


def test_overrides_are_typed_and_nested():
    data = apply_overrides({"training": {"epochs": 1}}, ["training.epochs=2", "method.name=full", "data.train=[a.jsonl]"])
    recipe = validate_recipe(data)
    assert recipe.training.epochs == 2.0
    assert recipe.method.name == "full"
    assert recipe.data.train == ["a.jsonl"]


def test_override_without_equals_is_a_user_error():
    with pytest.raises(DomaintuneError, match="KEY=VALUE"):
        apply_overrides({}, ["training.epochs"])


def test_relative_data_paths_resolve_against_recipe_folder(tmp_path):
    recipe = load_recipe(write(tmp_path, "data:\n  train: [data/x.jsonl]\n"))
    assert recipe.data.train == [str(tmp_path / "data" / "x.jsonl")]


def test_invalid_yaml_reports_line(tmp_path):
    with pytest.raises(DomaintuneError, match="line 2"):
        load_recipe(write(tmp_path, "training: x\n  lr: 1\n"))


def test_checkpoints_must_align_with_validation():
    with pytest.raises(DomaintuneError, match="save_every must be a multiple of eval_every"):
        validate_recipe({"training": {"eval_every": 10, "save_every": 15}})


def test_cli_check_reports_errors_with_exit_code_2(tmp_path):
    result = runner.invoke(app, ["recipe", "check", str(write(tmp_path, "training:\n  lr: fast\n"))])
    assert result.exit_code == 2
    assert "training.lr" in result.output
    assert "Traceback" not in result.output


def test_cli_check_accepts_set_overrides(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 1\n")
    assert runner.invoke(app, ["recipe", "check", str(path), "--set", "training.epochs=3"]).exit_code == 0
    bad = runner.invoke(app, ["recipe", "check", str(path), "--set", "training.epochs=many"])
    assert bad.exit_code == 2 and "training.epochs" in bad.output


def test_cli_schema_is_json_schema():
    result = runner.invoke(app, ["recipe", "schema"])
    schema = json.loads(result.output)
    assert {"model", "data", "method", "training", "evaluation", "export"} <= set(schema["properties"])


def test_overrides_reach_into_list_items_by_number():
    data = {"stages": [{"training": {"max_steps": 30}}, {"label": "b"}]}
    apply_overrides(data, ["stages.0.training.max_steps=2", "stages.1.training.lr=0.1"])
    assert data["stages"] == [{"training": {"max_steps": 2}}, {"label": "b", "training": {"lr": 0.1}}]
    with pytest.raises(DomaintuneError, match="3 is not an item number below 2"):
        apply_overrides(data, ["stages.3.training.max_steps=2"])
    with pytest.raises(DomaintuneError, match="stages is a list"):
        apply_overrides(data, ["stages.x=1"])


def test_a_curriculum_written_back_whole_still_has_valid_stages(tiny_recipe):
    """A run's recipe file is the whole recipe, so each stage's unset objective and method come back as null."""
    from domaintune.config.recipe import stage_recipes

    tiny_recipe["stages"] = [{"label": "first", "training": {"max_steps": 2}}, {"label": "second"}]
    written = validate_recipe(tiny_recipe).model_dump(mode="json")
    assert written["stages"][0]["method"] is None
    stages = stage_recipes(validate_recipe(written))
    assert [stage["name"] for stage in stages] == ["tiny-first", "tiny-second"]
    assert stages[0]["method"] == written["method"] and stages[0]["training"]["max_steps"] == 2


@pytest.mark.parametrize("method", ["prefix", "prompt", "ia3", "loha", "lokr", "adapters"])
def test_a_reward_model_is_refused_with_a_method_that_cant_make_a_scorer(method):
    with pytest.raises(DomaintuneError, match=f"objective reward trains with method lora or full or freeze .*not {method}"):
        validate_recipe({"objective": {"name": "reward"}, "method": {"name": method}})
