"""Hyper-parameter search: optuna samples recipe values, and every trial is one ordinary training run.

A trial is `pipeline.train` on the recipe with the sampled values applied as `--set`-style
overrides, so each trial leaves a normal run directory. The study lives in an optuna storage
(SQLite next to the runs by default); running the same command again resumes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError
from transformers import TrainerCallback

from domaintune.config import Recipe, apply_overrides, validate_recipe
from domaintune.config.recipe import as_recipe
from domaintune.config.workflows import CategoricalParam, FloatParam, IntParam, SearchParam, TuneConfig
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.tune_report import best_trial, trial_rows, write_tune_report
from domaintune.storage.rundir import RunDir
from domaintune.workflows import pipeline

DEFAULT_LORA_RANKS = [8, 16, 32]
# Completed trials the median pruner waits for: a median of one or two losses is mostly noise.
PRUNER_STARTUP_TRIALS = 3


class TrialCrashed(Exception):
    """A trial failed for a reason that is not the user's input: the study records it and goes on."""


@dataclass(frozen=True)
class TuneResult:
    study: optuna.Study
    folder: Path  # <output_dir>/<name>-tune/

    @property
    def best_recipe(self) -> Path:
        return self.folder / "best_recipe.yaml"

    @property
    def trials_csv(self) -> Path:
        return self.folder / "trials.csv"

    @property
    def report(self) -> Path:
        return self.folder / "report.html"


class PruningCallback(TrainerCallback):
    """Reports every validation loss to the optuna trial and stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.eval_losses: list[float] = []
        self.pruned = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics:
            return
        self.eval_losses.append(metrics["eval_loss"])
        self.trial.report(metrics["eval_loss"], state.global_step)
        if self.trial.should_prune():
            # Stopping (rather than raising TrialPruned here) lets the Trainer finish the run directory.
            self.pruned = True
            control.should_training_stop = True


def tune_recipe(recipe: Recipe, trials: int | None = None, console: Console | None = None) -> TuneResult:
    """Run `trials` more trials (default: tune.trials) of the recipe's study and write the tune folder."""
    console = console or Console(stderr=True)
    config = recipe.tune or TuneConfig()
    space = search_space(recipe)
    check_space(recipe, space)
    study = open_study(recipe, config)
    # A DomaintuneError is not caught: it would recur in every trial, so it ends the study with its message.
    study.optimize(_objective(recipe, space, console), n_trials=trials or config.trials, catch=(TrialCrashed,))

    result = TuneResult(study, Path(recipe.output_dir).resolve() / f"{recipe.name}-tune")
    result.folder.mkdir(parents=True, exist_ok=True)
    all_trials = study.get_trials(deepcopy=False)
    study.trials_dataframe().to_csv(result.trials_csv, index=False)
    write_tune_report(all_trials, result.report, study.study_name)
    best = best_trial(all_trials)
    if best is None:
        raise DomaintuneError(f"no trial of study '{study.study_name}' completed; see {result.report}")
    _write_best_recipe(recipe, best, result.best_recipe, len(all_trials))
    _print_summary(all_trials, best, result, console)
    return result


def search_space(recipe: Recipe) -> dict[str, SearchParam]:
    """tune.space, or by default the learning rate (log scale, 10x either way) and, for LoRA, the rank."""
    if recipe.tune is not None and recipe.tune.space:
        return recipe.tune.space
    lr = recipe.training.lr
    space: dict[str, SearchParam] = {"training.lr": FloatParam(low=lr / 10, high=lr * 10, log=True)}
    if recipe.method.name == "lora":
        space["method.r"] = CategoricalParam(choices=DEFAULT_LORA_RANKS)
    return space


def check_space(recipe: Recipe, space: dict[str, SearchParam]) -> None:
    """Each key must be a recipe field that accepts both ends of its range (or every choice)."""
    for key, param in space.items():
        values = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
        for value in values:
            override = _override(key, value)
            data = apply_overrides(recipe.model_dump(mode="json"), [override])
            validate_recipe(data, source=f"tune.space: {override}")


def default_storage(recipe: Recipe) -> str:
    return f"sqlite:///{(Path(recipe.output_dir) / f'{recipe.name}-tune.db').resolve()}"


def open_study(recipe: Recipe, config: TuneConfig) -> optuna.Study:
    """Create the study, or load it when the storage already holds one of that name (resume)."""
    storage = config.storage or default_storage(recipe)
    if config.storage is None:
        Path(recipe.output_dir).mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    if config.pruner == "median":
        # The first validation says little about where a run ends up: compare trials from the second one on.
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=2 * recipe.training.eval_every
        )
    else:
        pruner = optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=config.study_name or recipe.name,
            direction="minimize",
            pruner=pruner,
            load_if_exists=True,
        )
    except (SQLAlchemyError, ValueError) as error:
        raise DomaintuneError(f"tune.storage {storage!r}: {error}") from None
    seed = recipe.seed if config.seed is None else config.seed
    # A sampler seeded as in an earlier session would draw that session's points again; offset by its trials.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def _objective(recipe: Recipe, space: dict[str, SearchParam], console: Console):
    def objective(trial: optuna.Trial) -> float:
        overrides = [_override(key, _suggest(trial, key, param)) for key, param in space.items()]
        trial_recipe = as_recipe(recipe, [*overrides, f"name={recipe.name}-trial-{trial.number}"])
        console.rule(f"trial {trial.number}: {' '.join(overrides)}")
        reporter = PruningCallback(trial)
        try:
            run = pipeline.train(trial_recipe, callbacks=[reporter], console=console)
        except DomaintuneError:
            raise
        except Exception as error:
            # optuna's catch= goes by type and a DomaintuneError is an Exception too, so wrap the others.
            raise TrialCrashed(repr(error)) from error
        trial.set_user_attr("run_dir", str(run.root))
        if reporter.pruned:
            raise optuna.TrialPruned(f"validation loss {reporter.eval_losses[-1]:.4f} is above the median")
        return _validation_loss(run, trial_recipe, reporter)

    return objective


def _suggest(trial: optuna.Trial, key: str, param: SearchParam):
    if isinstance(param, FloatParam):
        return trial.suggest_float(key, param.low, param.high, log=param.log)
    if isinstance(param, IntParam):
        return trial.suggest_int(key, param.low, param.high, step=param.step)
    return trial.suggest_categorical(key, param.choices)


def _override(key: str, value) -> str:
    # JSON is valid YAML, and quoting keeps a string choice such as "yes" or "8" a string.
    return f"{key}={json.dumps(value)}"


def _validation_loss(run: RunDir, recipe: Recipe, reporter: PruningCallback) -> float:
    if not reporter.eval_losses:
        raise DomaintuneError(
            f"{run.data}: no validation rows, and the search minimises validation loss "
            "(set data.split.validation above 0 or give data.validation files)"
        )
    if recipe.training.early_stopping is None:
        return reporter.eval_losses[-1]  # the saved model is the last one
    # Early stopping restored the best checkpoint, so that is the model this trial produced.
    best = run.training_summary().get("best_eval_loss")
    return best if best is not None else min(reporter.eval_losses)


def _write_best_recipe(recipe: Recipe, best: optuna.trial.FrozenTrial, path: Path, n_trials: int) -> None:
    # The recipe as given with the best values, without the tune section: ready for `domaintune run`.
    best_recipe = as_recipe(recipe, [*(_override(key, value) for key, value in best.params.items()), "tune=null"])
    header = (
        f"# Best of {n_trials} trials: trial {best.number}, validation loss {best.value:.4f}\n"
        f"# run directory: {best.user_attrs.get('run_dir', '-')}\n"
    )
    path.write_text(header + yaml.safe_dump(best_recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def _print_summary(trials: list, best: optuna.trial.FrozenTrial, result: TuneResult, console: Console) -> None:
    header, rows = trial_rows(trials)
    table = Table(*header, title=f"study {result.study.study_name}")
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == str(best.number) else None)
    console.print(table)
    console.print(f"Best: trial {best.number}, validation loss {best.value:.4f}")
    for key, value in best.params.items():
        console.print(f"  {key} = {value}", highlight=False)
