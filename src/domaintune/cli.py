"""The `domaintune` command: a thin typer layer over domaintune.api."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from domaintune import api
from domaintune.core.errors import DomaintuneError
from domaintune.training.distributed import launched_worker

app = typer.Typer(help="Turn a small pretrained language model into a domain expert.", no_args_is_help=True)
recipe_app = typer.Typer(help="Inspect and validate recipes.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare data sets.", no_args_is_help=True)
models_app = typer.Typer(help="Base models.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(data_app, name="data")
feedback_app = typer.Typer(help="Collect people's preferences between answers on a local page.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(feedback_app, name="feedback")

console = Console(stderr=True)
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set training.epochs=2 (repeatable).")
]


def user_errors(command):
    """User mistakes become one red message and exit code 2, never a stack trace."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DomaintuneError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]; continue a training run with `domaintune train RECIPE --resume`")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def quickstart(
    overrides: SetOption = None,
    with_head: Annotated[bool, typer.Option("--with-head", help="Also train a token-classification head (minilm-l6) on the same splits and report its entity F1 alongside.")] = False,
):
    """Financial entity extraction on the bundled model: fetch data, LoRA-tune, compare with base, report."""
    run = api.quickstart(overrides=overrides, console=console, with_head=with_head)
    typer.echo(f"Report: {run.report}")


@app.command()
@user_errors
def init(
    data: Annotated[list[Path], typer.Argument(help="Data files (JSONL, JSON, CSV, Parquet) or documents.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Recipe file to write.")] = Path("recipe.yaml"),
    task: Annotated[Optional[str], typer.Option("--task", help="What the model should do, in your words (opens the prompts).")] = None,
    model: Annotated[str, typer.Option("--model", help="Base model: built-in name, local folder, or hub id.")] = "smollm2-135m-instruct",
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (default: the first file's name).")] = None,
    estimate: Annotated[bool, typer.Option("--estimate/--no-estimate", help="Also time a few steps and predict the run time.")] = True,
):
    """Write a recipe sized to your data, with the reason for every choice as a comment."""
    if out.exists():
        raise DomaintuneError(f"{out}: exists already; choose another file with -o")
    result = api.init(data, out=out, task=task, model=model, name=name, estimate_run=estimate, console=console)
    for note in result["notes"]:
        console.print(f"  {note}", highlight=False)
    typer.echo(f"Recipe: {result['path']}")


@app.command("run")
@user_errors
def run_recipe(recipe: Path, overrides: SetOption = None):
    """Run a whole recipe: prepare, train, evaluate against base, export, report."""
    run = api.run(recipe, overrides=overrides, console=console)
    _print_reports(run.root)


@app.command()
@user_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe file, or a run directory (prepared, or to resume).")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue the latest run of this recipe from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the recipe or data changed since the run was made (it continues with the recipe as it is now).")] = False,
    overrides: SetOption = None,
    processes: Annotated[
        Optional[int], typer.Option("--processes", min=1, help="Train in N processes (overrides distributed.processes).")
    ] = None,
    machine_rank: Annotated[
        Optional[int],
        typer.Option("--machine-rank", min=0, help="This machine's rank in a multi-node run (overrides distributed.machine_rank)."),
    ] = None,
):
    """Prepare data and train (or resume training)."""
    run = api.train(
        recipe, resume=resume, overrides=overrides, processes=processes, machine_rank=machine_rank, console=console,
        force=force,
    )
    if not launched_worker():  # the launching process reports once, after all its processes finished
        typer.echo(f"Model: {run.model}")


@app.command()
@user_errors
def tune(
    recipe: Path,
    trials: Annotated[
        Optional[int], typer.Option("--trials", min=1, help="Trials to run now (default: the recipe's tune.trials).")
    ] = None,
    overrides: SetOption = None,
):
    """Search hyper-parameters with optuna (one training run per trial); re-running resumes the study."""
    result = api.tune(recipe, trials=trials, overrides=overrides, console=console)
    typer.echo(f"Best recipe: {result.best_recipe}")
    typer.echo(f"Report: {result.report}")


@app.command()
@user_errors
def evaluate(
    run_dir: Path,
    harness: Annotated[
        bool, typer.Option("--harness", help="Also run the test split and probes as lm-evaluation-harness tasks.")
    ] = False,
):
    """Evaluate a run's tuned model against its base model and write the report."""
    results = api.evaluate(run_dir, console=console, harness=harness or None)
    if "models" in results:  # a reward model has no base-vs-tuned table, only its pairwise accuracy
        _print_results(results)
    _print_reports(Path(run_dir).resolve())


@app.command()
@user_errors
def select(
    recipe: Path,
    candidates: Annotated[str, typer.Option("--candidates", help="Comma-separated base models: names, folders or hub ids.")],
    samples: Annotated[int, typer.Option("--samples", min=1, help="Test rows each candidate answers.")] = 30,
    shots: Annotated[int, typer.Option("--shots", min=0, help="Training rows shown as examples in the few-shot setting.")] = 3,
    estimate_training: Annotated[
        bool, typer.Option("--estimate", help="Also predict each candidate's training run time (probes a few steps each).")
    ] = False,
    overrides: SetOption = None,
):
    """Rank candidate base models on a sample of the task by quality, speed and memory, and recommend one."""
    names = [name.strip() for name in candidates.split(",") if name.strip()]
    selection = api.select(recipe, names, samples=samples, shots=shots, estimate_training=estimate_training,
                           overrides=overrides, console=console)
    metric = selection["metric"]
    table = Table("rank", "model", metric, "loss", "s/answer", "tokens/s", "weights MB", "est. run")
    for position, row in enumerate(selection["candidates"], start=1):
        run_time = row.get("estimated_run_seconds")
        table.add_row(str(position), row["model"], f"{row['score']:.3f} ({row['setting']})", _fmt(row["loss"]),
                      str(row["seconds_per_item"]), str(row["tokens_per_second"]), f"{row['memory_mb']:.0f}",
                      "-" if run_time is None else f"{run_time / 60:.1f} min")
    Console().print(table)
    typer.echo(f"Recommendation: {selection['recommendation']} ({'; '.join(selection['reasons'])})")
    typer.echo(f"Details: {selection['path']}")


@app.command()
@user_errors
def export(run_dir: Path):
    """Export a run's adapter and merged safetensors model."""
    for kind, path in api.export_model(run_dir, console=console).items():
        typer.echo(f"{kind}: {path}")


@app.command()
@user_errors
def serve(
    models: Annotated[list[str], typer.Argument(help="[NAME=]run directory, model folder (causal LM, classifier, "
                                                "sentence encoder), bundled name or hub id; repeatable.")],
    adapter: Annotated[Optional[list[str]], typer.Option("--adapter", help="NAME=PATH peft adapter on the causal LM (repeatable).")] = None,
    adapters_dir: Annotated[Optional[str], typer.Option("--adapters-dir", help="Serve every adapter subfolder, named by folder.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; other than loopback needs API keys.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    keys_file: Annotated[Optional[str], typer.Option("--keys-file", help="YAML/JSON keys: id, key or sha256, models ([\"*\"]: all), admin, limits.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="Allow browsers on this origin (repeatable).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Largest max_tokens a request may ask for.")] = 1024,
    max_context: Annotated[Optional[int], typer.Option("--max-context", help="Cap on prompt + max_tokens.")] = None,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Larger request bodies get 413.")] = 1 << 20,
    max_prompts: Annotated[int, typer.Option("--max-prompts", help="Prompts per /v1/completions request; more get 400.")] = 16,
    max_pending: Annotated[int, typer.Option("--max-pending", help="Generation requests waiting for a batch; more get 503.")] = 256,
    max_concurrent: Annotated[int, typer.Option("--max-concurrent", help="Requests in progress; more get 503.")] = 1024,
    max_loaded_adapters: Annotated[int, typer.Option("--max-loaded-adapters", help="Adapters kept loaded (LRU).")] = 4,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Requests generated together.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", help="How long the batcher waits for more requests.")] = 5.0,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 where the CPU has it), bfloat16 or float32.")] = "auto",
    threads: Annotated[str, typer.Option("--threads", help="Torch threads, or auto (the cores other work leaves free).")] = "auto",
    log_content: Annotated[bool, typer.Option("--log-content", help="Put prompts and completions in the audit log.")] = False,
    redact_pii: Annotated[bool, typer.Option("--redact-pii", help="Replace PII in outputs with placeholders like [EMAIL].")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run model code shipped with the model.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="auto (OpenVINO's continuous batching where it loads the "
                                        "model; else CTranslate2 for a request into an idle server and torch for "
                                        "concurrent ones; else torch), openvino, torch, ctranslate2, or vllm (hands "
                                        "the model and adapters to vLLM).")] = "auto",
    compute_type: Annotated[str, typer.Option("--compute-type", help="auto (OpenVINO: int8 weights with VNNI/AVX-512, "
                                              "else float16; CTranslate2: float32, int8 where CT2_USE_MKL=1), "
                                              "int8, float16 (OpenVINO), float32, ... (CTranslate2; auto then "
                                              "skips OpenVINO).")] = "auto",
    vllm_python: Annotated[Optional[str], typer.Option("--vllm-python", help="Python of a venv with vLLM installed.")] = None,
):
    """Serve models over an OpenAI-compatible API (chat, completions, embeddings, classify) with keys and limits."""
    api.serve(
        models, adapters=adapter, adapters_dir=adapters_dir, engine=engine, vllm_python=vllm_python, console=console,
        host=host, port=port, keys_file=keys_file, cors_origins=cors_origin or [], max_tokens=max_tokens,
        max_context=max_context, max_body_bytes=max_body_bytes, max_prompts=max_prompts, max_pending=max_pending,
        max_concurrent=max_concurrent, max_loaded_adapters=max_loaded_adapters,
        max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, dtype=dtype, compute_type=compute_type,
        threads=int(threads) if threads.isdigit() else threads, log_content=log_content,
        redact_pii=redact_pii, trust_remote_code=trust_remote_code,
    )


@app.command()
@user_errors
def estimate(recipe: Path, overrides: SetOption = None):
    """Predict wall time, peak memory and tokens of a run on this machine (probes a few steps)."""
    result = api.estimate(recipe, overrides=overrides, console=console)
    typer.echo(json.dumps(result, indent=2))


@app.command()
@user_errors
def ui(
    runs: Annotated[Path, typer.Option("--runs", help="The runs folder the workbench shows and launches into.")] = Path("runs"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on; other than loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 7860,
    token: Annotated[Optional[str], typer.Option("--token", help="Secret every request must carry (open the printed URL once).")] = None,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", min=1, help="Larger uploads are refused.")] = 100,
):
    """The workbench: a local web page to prepare data, launch and watch runs, and compare them."""
    from domaintune.workbench.app import serve as serve_workbench

    serve_workbench(runs, host=host, port=port, token=token, upload_cap=max_upload_mb * 2**20, console=console)


@data_app.command("prepare")
@user_errors
def data_prepare(recipe: Path, overrides: SetOption = None):
    """Validate, clean, dedup and split the recipe's data; writes the splits and a data card."""
    run, card = api.prepare_data(api.load(recipe, overrides), console=console)
    typer.echo(f"Data: {run.data}")


@data_app.command("synthesize")
@user_errors
def data_synthesize(recipe: Path, overrides: SetOption = None):
    """Turn documents into question/answer pairs with a local model (data.synthesize); grounded pairs only."""
    summary = api.synthesize(recipe, overrides=overrides, console=console)
    typer.echo(f"Pairs: {summary['output']}")


@recipe_app.command("schema")
def recipe_schema():
    """Print the recipe's JSON schema."""
    typer.echo(json.dumps(api.recipe_schema(), indent=2))


@recipe_app.command("check")
@user_errors
def recipe_check(recipe: Path, overrides: SetOption = None):
    """Validate a recipe without running it."""
    api.check_recipe(recipe, overrides)
    typer.echo(f"{recipe}: valid")


@models_app.command("list")
def models_list():
    """Show the built-in model names (any local folder or hub id works too)."""
    table = Table("name", "kind", "source", "installed", "description")
    for row in api.list_models():
        table.add_row(row["name"], row["kind"], row["source"], "yes" if row["installed"] else "no", row["description"])
    Console().print(table)


@app.command()
@user_errors
def compare(recipe: Path, overrides: SetOption = None):
    """Train the recipe's compare.variants on the same data and tabulate quality, time, parameters and size."""
    from domaintune.workflows.compare import markdown

    result = api.compare(recipe, overrides=overrides, console=console)
    typer.echo(markdown(result["rows"], result["base"]))
    typer.echo(f"Table: {result['folder']}/comparison.md")


@app.command("methods")
@user_errors
def methods(
    model: Annotated[Optional[str], typer.Option("--model", help="Model to size the methods for (default: the default model).")] = None,
):
    """List the training methods and objectives: what each trains, when to use it, its cost for the model."""
    from domaintune.config import ModelConfig
    from domaintune.objectives import OBJECTIVES

    model = model or ModelConfig().name
    rows = api.list_methods(model)
    table = Table("method", "trains", "when to use it", "trainable", "share", "memory*", title=f"Methods for {model}")
    for row in rows:
        notes = [] if row["mergeable"] else ["adapter only on export"]
        table.add_row(
            row["name"], row["trains"], row["when"] + (f" ({'; '.join(notes)})" if notes else ""),
            f"{row['trainable']:,}", f"{row['share']:.2%}", f"{row['memory_mb']:,} MB",
        )
    out = Console(width=max(Console().width, 150))  # the table needs room; piped output is 80 wide
    out.print(table)
    out.print("* weights + gradients + Adam state at the method's defaults; activations come on top "
              "(`domaintune estimate RECIPE` measures a run).")
    objectives = Table("objective", "when to use it", title="Objectives (objective.name; default: sft)")
    for name, module in OBJECTIVES.items():
        objectives.add_row(name, module.SUMMARY)
    out.print(objectives)


@feedback_app.command("serve")
@user_errors
def feedback_serve(
    source: Annotated[str, typer.Argument(help="A run directory (base vs tuned) or a model (sampled answers).")],
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts (.txt lines or JSONL prompt/messages); a run defaults to its test samples.")] = None,
    db: Annotated[Optional[Path], typer.Option(help="Session database; default RUN/eval/feedback.db or ./feedback.db.")] = None,
    samples: Annotated[int, typer.Option(help="Answers per prompt from one model.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer.")] = 128,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
):
    """Serve the page: pick the better of two answers shown blind; choices are saved as they are made."""
    api.feedback(source, prompts=prompts, db=db, samples=samples, max_new_tokens=max_new_tokens, port=port, console=console)


@feedback_app.command("export")
@user_errors
def feedback_export(db: Path, out: Annotated[Path, typer.Option(help="Output JSONL in the pairwise format.")]):
    """Write a session's choices as preference pairs (prompt, chosen, rejected) for dpo, reward, ..."""
    result = api.export_feedback(db, out)
    typer.echo(f"{result['pairs']} pairs written to {result['out']} ({result['ties']} ties left out)")


def _print_reports(root: Path) -> None:
    """The run's report, and preferences.html where a preference objective wrote one."""
    for name in ("report.html", "preferences.html"):
        if (root / name).exists():
            typer.echo(f"Report: {root / name}")


def _print_results(results: dict) -> None:
    models = results["models"]
    names = list(models)
    comparison = results.get("comparison") or {}
    table = Table("metric", *names, *(["change (interval)", "verdict"] if comparison else []))

    def verdict(key: str) -> list[str]:
        entry = comparison.get(key)
        if not comparison:
            return []
        if not entry:
            return ["", ""]
        return [f"{entry['delta']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]", entry["verdict"]]

    keys = sorted({key for model in models.values() for key in model["metrics"]})
    for key in keys:
        table.add_row(key, *(f"{models[name]['metrics'].get(key, float('nan')):.3f}" for name in names), *verdict(key))
    for split in ("validation", "test"):
        table.add_row(f"{split} loss", *(_fmt(models[name]["loss"].get(split)) for name in names),
                      *verdict(f"loss ({split})"))
    Console().print(table)
    overall = ((results.get("forgetting") or {}).get("comparison") or {}).get("overall")
    if overall:
        Console().print(f"General ability (probes): base {overall['base']:.3f} → tuned {overall['tuned']:.3f}, "
                        f"{overall['delta']:+.3f} [{overall['low']:+.3f}, {overall['high']:+.3f}]: {overall['verdict']}",
                        highlight=False)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main():
    import warnings

    from transformers.utils import logging as transformers_logging

    # Library chatter (weight-loading bars, deprecations inside peft) drowns our own progress output.
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    app()


if __name__ == "__main__":  # `accelerate launch -m domaintune.cli train RUN_DIR` starts each process here
    main()
