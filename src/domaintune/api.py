"""The Python API: one function per CLI verb. The CLI is a thin layer over these."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from domaintune.config import ExportConfig, Recipe, load_recipe, recipe_json_schema
from domaintune.config.recipe import RecipeLike, as_recipe
from domaintune.core.errors import DomaintuneError
from domaintune.storage.rundir import RunDir

if TYPE_CHECKING:
    from domaintune.workflows.tune import TuneResult


def _console(console: Console | None) -> Console:
    return console or Console(stderr=True)


def _run_dir(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)


def load(recipe: RecipeLike, overrides: list[str] | None = None) -> Recipe:
    """A validated Recipe from a YAML path, a dict, or a Recipe (overrides as `a.b=value`)."""
    return as_recipe(recipe, overrides)


def check_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    return load_recipe(path, overrides)


def recipe_schema() -> dict:
    return recipe_json_schema()


def list_models() -> list[dict]:
    from domaintune.models.registry import list_models as registry_models

    return registry_models()


def list_methods(model: str | None = None) -> list[dict]:
    """Every training method with what it trains, when to use it, and its trainable parameters and
    static training memory (weights + gradients + Adam state) for `model` (default: the default model)."""
    from domaintune.config import ModelConfig
    from domaintune.methods.guide import describe_methods
    from domaintune.models.registry import resolve_model_path

    return describe_methods(resolve_model_path(model or ModelConfig().name))


def prepare_data(recipe: RecipeLike, run: RunDir | None = None, console: Console | None = None) -> tuple[RunDir, dict]:
    """Validate, clean, dedup and split the recipe's data into a run directory's data/ folder."""
    from domaintune.workflows import pipeline

    return pipeline.prepare(load(recipe), run=run, console=_console(console))


def init(data: list[str | Path], out: str | Path = "recipe.yaml", task: str | None = None,
         model: str = "smollm2-135m-instruct", name: str | None = None, estimate_run: bool = False,
         console: Console | None = None) -> dict:
    """Write a recipe sized to the data files (format, columns, label prompt, metrics, split, epochs, lr),
    with the reason for each choice as a comment; `estimate_run` also predicts its run time.
    Returns {"path", "recipe", "notes"} (and "estimate")."""
    from domaintune.workflows.init_recipe import write_recipe

    console = _console(console)
    path, recipe, notes = write_recipe([str(item) for item in data], Path(out), task=task, model=model, name=name)
    result = {"path": str(path), "recipe": recipe, "notes": notes}
    if estimate_run:
        result["estimate"] = estimate(path, console=console)
    return result


def synthesize(recipe: RecipeLike, overrides: list[str] | None = None, console: Console | None = None) -> dict:
    """Turn the recipe's documents (data.synthesize.documents, else the documents in data.train) into
    question/answer or instruction/response pairs with a local model; writes them in the recipe's
    data format with provenance and returns the counts and the output path."""
    from domaintune.data.synthesize import synthesize as synthesize_documents

    return synthesize_documents(load(recipe, overrides), console=_console(console))


def train(recipe_or_run: RecipeLike, resume: bool = False, overrides: list[str] | None = None, callbacks: list | None = None,
          console: Console | None = None, processes: int | None = None, machine_rank: int | None = None,
          force: bool = False) -> RunDir:
    """Train a recipe in a new run directory, or with resume=True continue the latest run of that recipe
    (or the given run directory) from its last checkpoint; a run made from another recipe or data is
    refused unless `force`. `processes` > 1 launches that many processes (workflows/pipeline.py's `train` says how)."""
    from domaintune.workflows import pipeline

    return pipeline.train(recipe_or_run, resume=resume, overrides=overrides, callbacks=callbacks,
                          console=_console(console), processes=processes, machine_rank=machine_rank, force=force)


def evaluate(run_dir: str | Path | RunDir, console: Console | None = None, harness: bool | None = None) -> dict:
    """Base vs tuned on the run's test split, with intervals, forgetting probes and error analysis;
    `harness=True` also runs the lm-evaluation-harness tasks (default: the recipe's evaluation.harness)."""
    from domaintune.workflows import pipeline

    return pipeline.evaluate(_run_dir(run_dir), console=_console(console), harness=harness)


def export_model(run_dir: str | Path | RunDir, console: Console | None = None,
                 export: ExportConfig | None = None) -> dict[str, str]:
    """The run's model as files others load; `export` chooses them instead of the recipe's export section."""
    from domaintune.workflows import pipeline

    return pipeline.export(_run_dir(run_dir), console=_console(console), export=export)


def run(recipe: RecipeLike, overrides: list[str] | None = None, console: Console | None = None) -> RunDir:
    """The whole recipe: prepare data, train, evaluate against the base model, export, report."""
    from domaintune.workflows.stages import run_recipe

    return run_recipe(load(recipe, overrides), _console(console))


def estimate(recipe: RecipeLike, overrides: list[str] | None = None, console: Console | None = None) -> dict:
    """Predict wall time per phase, peak memory and tokens of `run(recipe)` on this machine: exact
    token counts from the prepared data, speeds from a short probe of the recipe's own engine."""
    from domaintune.workflows.estimate import estimate_run

    return estimate_run(load(recipe, overrides), _console(console))


def select(
    recipe: RecipeLike,
    candidates: list[str],
    samples: int = 30,
    shots: int = 3,
    estimate_training: bool = False,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> dict:
    """Rank candidate base models on a sample of the recipe's task (zero- and few-shot quality, speed,
    memory) and recommend one; `estimate_training` adds each one's predicted run time. Writes
    <output_dir>/<name>-select/selection.json."""
    import tempfile

    from domaintune.evaluation.select import select_base_model, write_selection

    console = _console(console)
    recipe = load(recipe, overrides)
    if not candidates:
        raise DomaintuneError("--candidates: name at least one model, e.g. --candidates smollm2-135m-instruct,./my-model")
    # The prepared sample is scratch: it must not show up among the user's runs, nor stay behind in /tmp.
    with tempfile.TemporaryDirectory(prefix="domaintune-select-") as scratch:
        run_dir, _ = prepare_data(recipe.model_copy(update={"output_dir": scratch}), console=console)
        selection = select_base_model(recipe, run_dir.data, candidates, samples, shots, console)
    if estimate_training:
        for candidate in selection["candidates"]:
            forecast = estimate(recipe, overrides=[f"model.name={candidate['model']}"], console=console)
            candidate["estimated_run_seconds"] = forecast["total_seconds"]
    selection["path"] = str(write_selection(selection, Path(recipe.output_dir) / f"{recipe.name}-select"))
    return selection


def tune(
    recipe: RecipeLike,
    trials: int | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> TuneResult:
    """Hyper-parameter search with optuna: `trials` more trials (default: the recipe's tune.trials), each
    a training run of the recipe with sampled values. Writes <output_dir>/<name>-tune/ (best_recipe.yaml,
    trials.csv, report.html); re-running resumes the study stored in tune.storage."""
    from domaintune.workflows.tune import tune_recipe

    return tune_recipe(load(recipe, overrides), trials=trials, console=_console(console))


def compare(recipe: RecipeLike, overrides: list[str] | None = None, console: Console | None = None) -> dict:
    """Train every variant of the recipe's `compare` section on the same data (one `run` each) and
    tabulate test loss, metrics, training time, trainable parameters and artifact size; writes
    <output_dir>/<name>-compare/comparison.csv and comparison.md. Returns {"rows", "base", "folder"}."""
    from domaintune.workflows.compare import compare_methods

    recipe = load(recipe, overrides)
    if recipe.compare is None:
        raise DomaintuneError("compare: the recipe has no compare section (compare.variants: a list of methods)")
    return compare_methods(recipe, _console(console))


def quickstart(overrides: list[str] | None = None, console: Console | None = None, with_head: bool = False) -> RunDir:
    """Financial entity extraction on the bundled SmolLM2: fetch data, tune with LoRA, compare with base.
    `with_head` also trains a token-classification head on the same splits and reports it alongside."""
    from domaintune.workflows.quickstart import add_token_head, quickstart_recipe

    console = _console(console)
    run_dir = run(quickstart_recipe(console), overrides=overrides, console=console)
    if with_head:
        add_token_head(run_dir, console)
    return run_dir


def serve(
    models: list[str],
    adapters: list[str] | None = None,
    adapters_dir: str | None = None,
    engine: str = "auto",
    vllm_python: str | None = None,
    console: Console | None = None,
    **settings,
) -> None:
    """An OpenAI-compatible server until interrupted. `models`: run directories, model folders (causal LM,
    classifier, sentence encoder), bundled names or hub ids, each optionally `NAME=...`; `adapters`:
    `NAME=PATH` peft adapters on the causal LM; `settings`: serving.settings.ServeSettings fields
    (host, port, keys_file, max_tokens, compute_type, ...). `engine`: auto (OpenVINO where it loads the model
    and adapters; else CTranslate2 and torch by load; else torch), openvino, torch, ctranslate2, or vllm (hands
    the causal LM and adapters to vLLM); serving/engine_choice.py."""
    from domaintune.serving.settings import ServeSettings
    from domaintune.serving.sources import resolve_sources

    console = _console(console)
    served = resolve_sources(models, adapters, adapters_dir)
    if engine == "vllm":
        from domaintune.serving.vllm import run_vllm

        code = run_vllm(served, ServeSettings(**settings), python=vllm_python, console=console)
        if code:
            raise DomaintuneError(f"--engine vllm: vLLM exited with code {code}")
        return
    from domaintune.serving.server import run_server

    run_server(served, ServeSettings(**settings, engine=engine), console=console)


def feedback_db(source: str | Path, db: str | Path | None = None) -> Path:
    """The session database: given, or eval/feedback.db in a run directory, or ./feedback.db."""
    if db is not None:
        return Path(db)
    return Path(source) / "eval" / "feedback.db" if (Path(source) / "recipe.yaml").exists() else Path("feedback.db")


def feedback(source: str | Path, prompts: str | Path | None = None, db: str | Path | None = None, samples: int = 2,
             max_new_tokens: int = 128, port: int = 8765, serve: bool = True, console: Console | None = None) -> dict:
    """Collect people's preferences on a local page (127.0.0.1): base vs tuned answers of a run directory
    (by default its evaluated test samples), or `samples` sampled answers of one model to `prompts`.
    Answers are generated first and kept in the SQLite `db`; an existing db resumes. Returns its summary."""
    from domaintune.evaluation.feedback import prepare_session
    from domaintune.evaluation.feedback import serve as serve_page

    console = _console(console)
    path = feedback_db(source, db)
    summary = prepare_session(str(source), path, Path(prompts) if prompts else None, samples=samples,
                              max_new_tokens=max_new_tokens, console=console)
    if serve:
        console.print(f"Feedback page: http://127.0.0.1:{port}/ ({summary['done']} of {summary['total']} judged; "
                      f"choices are saved in {path}). Stop with Ctrl+C.")
        serve_page(path, port=port)
    return summary


def export_feedback(db: str | Path, out: str | Path) -> dict:
    """The choices of a feedback session as `pairwise` preference rows (ties left out)."""
    from domaintune.evaluation.feedback import export_pairs

    return export_pairs(Path(db), Path(out))
