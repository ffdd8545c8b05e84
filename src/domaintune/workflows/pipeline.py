"""One run of a recipe: prepare the data, train, evaluate base vs tuned, export. Each step runs the
objective's own hook where it has one (objectives/__init__.py lists them) and the causal-LM engine
otherwise; this module is the only place that looks an objective's hooks up."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from domaintune.config import ExportConfig, Recipe
from domaintune.config.recipe import RecipeLike, as_recipe
from domaintune.core.chat import count_tokens
from domaintune.core.errors import DomaintuneError
from domaintune.data.prepare import prepare_dataset
from domaintune.data.text_generator import load_generator
from domaintune.evaluation.base_vs_tuned import evaluate_causal_lm
from domaintune.export.exporter import export_causal_lm
from domaintune.models.loading import load_tokenizer
from domaintune.objectives import hook
from domaintune.storage.rundir import RunDir
from domaintune.training.distributed import launch, launched_worker
from domaintune.training.trainer import train_causal_lm


def prepare(recipe: RecipeLike, run: RunDir | None = None, console: Console | None = None) -> tuple[RunDir, dict]:
    """Validate, clean, dedup and split the recipe's data into a run directory's data/ folder."""
    recipe = as_recipe(recipe)
    console = console or Console(stderr=True)
    run = run or RunDir.create(recipe)
    tokenizer = load_tokenizer(recipe.model)

    def prepare_one(data_config, folder):
        return prepare_dataset(
            data_config,
            folder,
            seed=recipe.seed,
            count_tokens=lambda row: count_tokens(tokenizer, row),
            console=console,
            tokenize=lambda text: tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"],
            paraphraser=lambda: load_generator(recipe, data_config.augment.model, max_new_tokens=128, batch_size=8),
        )

    own_preparation = hook(recipe.objective, "prepare")  # multitask prepares each task's data on its own
    card = own_preparation(recipe, run, prepare_one) if own_preparation else prepare_one(recipe.data, run.data)
    rewrite = hook(recipe.objective, "after_prepare")  # objective-specific rewriting of the splits (instruct)
    if rewrite:
        rewrite(run.data, recipe.objective)
    run.write_fingerprint(recipe)
    return run, card


def train_run(run: RunDir, resume: bool = False, callbacks: list | None = None, console: Console | None = None) -> dict:
    """Train the run's recipe on its prepared data in this process; returns the summary also written
    to model/training.json."""
    console = console or Console(stderr=True)
    objective = run.recipe().objective
    own_trainer = hook(objective, "train")
    if own_trainer:
        return own_trainer(run, resume=resume, callbacks=callbacks, console=console)
    own_encoding = hook(objective, "encode_rows")  # pretrain: fixed-length blocks
    return train_causal_lm(
        run, resume=resume, callbacks=callbacks, console=console,
        encode_rows=(lambda tokenizer, rows, max_length: own_encoding(tokenizer, rows, max_length, objective))
        if own_encoding else None,
        domain_perplexity=bool(hook(objective, "DOMAIN_PERPLEXITY")),
    )


def train(
    recipe_or_run: RecipeLike,
    resume: bool = False,
    overrides: list[str] | None = None,
    callbacks: list | None = None,
    console: Console | None = None,
    processes: int | None = None,
    machine_rank: int | None = None,
    force: bool = False,
) -> RunDir:
    """Train a recipe in a new run directory, or with resume=True continue the latest run of that
    recipe (or the given run directory) from its last checkpoint. Resuming a run made from another
    recipe (`overrides` included) or data is refused unless `force`, which continues it with the recipe as given.

    With distributed.processes > 1 the data is prepared here once, then that many processes started
    by `accelerate launch` train it. `processes` and `machine_rank` override the recipe's distributed
    section (for an existing run directory: for this launch only)."""
    console = console or Console(stderr=True)
    launch_settings = {"processes": processes, "machine_rank": machine_rank}
    launch_overrides = [f"distributed.{key}={value}" for key, value in launch_settings.items() if value is not None]
    if isinstance(recipe_or_run, (str, Path)) and Path(recipe_or_run).is_dir():
        run = RunDir.open(recipe_or_run)
        if resume or overrides:
            run.check_resume(as_recipe(run.recipe(), overrides), force, console)
    elif resume:
        recipe = as_recipe(recipe_or_run, overrides)
        run = RunDir.latest(recipe)
        run.check_resume(recipe, force, console)
    else:
        run, _ = prepare(as_recipe(recipe_or_run, [*(overrides or []), *launch_overrides]), console=console)
    worker = launched_worker()
    if not worker:  # a launched process's launcher has announced the run already
        console.print(f"Run directory: {run.root}")
    recipe = as_recipe(run.recipe(), launch_overrides)
    if worker or recipe.distributed.processes == 1:
        train_run(run, resume=resume, callbacks=callbacks, console=console)
    elif callbacks:
        raise DomaintuneError("callbacks work in single-process training only; launched processes can't reach them")
    else:
        launch(run, recipe, resume=resume)
    return run


def evaluate(run: RunDir, console: Console | None = None, harness: bool | None = None) -> dict:
    """Base vs tuned on the run's test split (the objective's own evaluation where it has one)."""
    console = console or Console(stderr=True)
    run.require_model()
    own_evaluation = hook(run.recipe().objective, "evaluate")
    if own_evaluation:
        return own_evaluation(run, console=console, harness=harness)
    return evaluate_causal_lm(run, console, harness)


def export(run: RunDir, console: Console | None = None, export: ExportConfig | None = None) -> dict[str, str]:
    """The run's model as files others load (the objective's own layout where it has one); `export`
    replaces the recipe's export section (the workbench's export button)."""
    console = console or Console(stderr=True)
    run.require_model()
    recipe = run.recipe()
    if export is not None:
        recipe = recipe.model_copy(update={"export": export})
    own_export = hook(recipe.objective, "export")
    if own_export:  # a classifier or an embedding model: its own artifact layout
        return own_export(run, console=console)
    return export_causal_lm(run, recipe, console)


def run_once(recipe: Recipe, console: Console | None = None) -> RunDir:
    """One run: prepare data, train, evaluate against the base model, export, report."""
    console = console or Console(stderr=True)
    run = train(recipe, console=console)
    evaluate(run, console=console)
    export(run, console=console)
    return run
