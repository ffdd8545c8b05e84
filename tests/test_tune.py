"""Hyper-parameter search: small optuna studies over the tiny model (one trial trains in ~2 s)."""
import json

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import domaintune
from domaintune.cli import app
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.tune_report import write_tune_report
from domaintune.storage.rundir import RunDir
from domaintune.workflows import pipeline
from domaintune.workflows.tune import PruningCallback, search_space

SPACE = {
    "training.lr": {"type": "float", "low": 5e-3, "high": 5e-2, "log": True},
    "method.r": {"type": "categorical", "choices": [4, 8]},
}


@pytest.fixture
def search_recipe(tiny_recipe) -> dict:
    tiny_recipe["training"]["max_steps"] = 8
    tiny_recipe["tune"] = {"space": SPACE}
    return tiny_recipe


def storage_of(recipe: dict) -> str:
    return f"sqlite:///{recipe['output_dir']}/{recipe['name']}-tune.db"


def test_study_writes_best_recipe_trials_and_report(search_recipe):
    result = domaintune.tune(search_recipe, trials=2)

    trials = result.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    best = domaintune.load(result.best_recipe)
    assert best.training.lr in {t.params["training.lr"] for t in trials}
    assert best.method.r in {t.params["method.r"] for t in trials}
    assert best.training.lr == result.study.best_params["training.lr"]
    assert best.name == "tiny" and best.tune is None  # a plain recipe for `domaintune run`
    for trial in trials:
        summary = json.loads((RunDir.open(trial.user_attrs["run_dir"]).model / "training.json").read_text())
        assert summary["global_step"] == 8

    table = pd.read_csv(result.trials_csv)
    assert len(table) == 2 and {"params_training.lr", "params_method.r", "value"} <= set(table.columns)
    html = result.report.read_text()
    assert "data:image/png;base64," in html and "training.lr" in html


def test_rerun_resumes_the_stored_study(search_recipe):
    domaintune.tune(search_recipe, trials=2)
    domaintune.tune(search_recipe, trials=1)

    study = optuna.load_study(study_name="tiny", storage=storage_of(search_recipe))
    assert [t.number for t in study.trials] == [0, 1, 2]
    # The resumed sampler must not replay the first session's draws.
    assert study.trials[2].params != study.trials[0].params


class FakeTrial:
    """Stands in for optuna.Trial: records reports and asks to prune from the second one on."""

    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return len(self.reports) >= 2


def test_pruning_callback_stops_training_when_the_trial_should_prune(tiny_recipe):
    trial = FakeTrial()
    callback = PruningCallback(trial)
    run = domaintune.train(tiny_recipe, callbacks=[callback])  # validates at steps 4, 8, 12

    assert callback.pruned
    assert [step for step, _ in trial.reports] == [4, 8]
    assert json.loads((run.model / "training.json").read_text())["global_step"] == 8


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"training.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "training.lrr: unknown key"),
        ({"training.batch_size": {"type": "int", "low": 0, "high": 8}}, "training.batch_size: input should be greater"),
        ({"method.r": {"type": "int", "low": 32, "high": 8}}, "tune.space.method.r: value error, low must be below"),
    ],
)
def test_bad_space_names_the_field(search_recipe, space, message):
    search_recipe["tune"]["space"] = space
    with pytest.raises(DomaintuneError, match=message):
        domaintune.tune(search_recipe)


def test_default_space_searches_lr_around_the_recipe_and_the_lora_rank(tiny_recipe):
    space = search_space(domaintune.load(tiny_recipe))
    assert (space["training.lr"].low, space["training.lr"].high, space["training.lr"].log) == (2e-3, 2e-1, True)
    assert space["method.r"].choices == [8, 16, 32]
    tiny_recipe["method"] = {"name": "full"}
    assert list(search_space(domaintune.load(tiny_recipe))) == ["training.lr"]


def test_user_error_in_a_trial_ends_the_study_with_its_message(search_recipe, tmp_path):
    search_recipe["data"]["train"] = [str(tmp_path / "missing.jsonl")]
    with pytest.raises(DomaintuneError, match="missing.jsonl"):
        domaintune.tune(search_recipe, trials=3)
    study = optuna.load_study(study_name="tiny", storage=storage_of(search_recipe))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def test_crashed_trial_is_recorded_and_the_study_goes_on(search_recipe, monkeypatch):
    real_train = pipeline.train
    calls = []

    def crash_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train", crash_once)
    result = domaintune.tune(search_recipe, trials=2)
    states = [t.state for t in result.study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert result.best_recipe.exists()


def test_cli_tune_prints_the_best_params(search_recipe, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(search_recipe))
    result = CliRunner().invoke(app, ["tune", str(path), "--trials", "1", "--set", "tune.pruner=none"])
    assert result.exit_code == 0, result.output
    assert "Best: trial 0" in result.output
    assert "training.lr = " in result.output and "method.r = " in result.output
    assert "best_recipe.yaml" in result.output


def test_report_shows_pruned_failed_and_categorical_trials(tmp_path):
    # A study filled by hand (no training): the report must cope with every trial state and string choices.
    study = optuna.create_study()
    for number, (state, scheduler) in enumerate([("complete", "cosine"), ("pruned", "linear"), ("fail", "cosine")]):
        study.enqueue_trial({"training.lr": 1e-3, "training.lr_scheduler": scheduler})
        trial = study.ask()
        trial.suggest_float("training.lr", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("training.lr_scheduler", ["cosine", "linear"])
        trial.report(3.0 - number, step=4)
        if state == "complete":
            study.tell(trial, 2.5)
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state.upper()))
    path = write_tune_report(study.trials, tmp_path / "report.html", "hand-made")
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "1 complete · 1 pruned · 1 fail" in html and "<td>linear</td>" in html
