"""What the workbench shows about runs, read from their directories each time (the run directory is the
single source of truth; the app keeps no copy of a run's state).

A run's status comes from its files and, for a run the workbench launched, from its job files
(jobs.py): `workbench/job.json` (the process id, written at launch) and `workbench/result.json` (how the
job ended, written by the job). A run made by the CLI has no job files; its status is what its files say.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from domaintune.core.errors import DomaintuneError
from domaintune.storage.jsonl import read_json, read_jsonl
from domaintune.storage.rundir import RunDir
from domaintune.workbench import jobs

# libyaml's loader when present: the runs page reads one recipe.yaml per run.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def inside(root: Path, relative: str) -> Path:
    """`relative` resolved under `root` (symbolic links followed); DomaintuneError when it leaves `root`,
    so a request can never name a file elsewhere, or a name no file can have (a NUL byte, too long)."""
    root = root.resolve()
    try:
        target = (root / relative).resolve()
        target.exists()  # raises for a name too long for the file system, as any later use of it would
    except (ValueError, OSError) as error:  # ValueError: a NUL byte
        reason = getattr(error, "strerror", None) or error
        raise DomaintuneError(f"{relative!r}: not a valid path ({reason})") from None
    if target != root and not target.is_relative_to(root):
        raise DomaintuneError(f"{relative}: outside the runs folder")
    return target


def open_run(runs: Path, name: str) -> RunDir:
    """The run directory `name`, directly under the runs folder."""
    root = inside(runs, name)
    if root.parent != runs.resolve() or not (root / "recipe.yaml").is_file():
        raise DomaintuneError(f"{name}: no such run")
    return RunDir(root)


def raw_recipe(run: RunDir) -> dict:
    """recipe.yaml as written (not validated: the list must show a run whose recipe no longer validates)."""
    try:
        data = yaml.load(run.recipe_file.read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def name_of(section) -> str:
    return section.get("name", "-") if isinstance(section, dict) else "-"


def progress(records: list[dict]) -> dict:
    """Step, total, ETA and tokens/s from metrics.jsonl (the Trainer's log lines)."""
    timed = [r for r in records if isinstance(r.get("time"), (int, float)) and "step" in r]
    found: dict = {}
    if timed:
        last = timed[-1]
        found.update(step=last["step"], total=last.get("max_steps"))
        first = timed[0]
        if last["step"] > first["step"] and found["total"]:
            per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
            found["eta_seconds"] = max(0.0, per_step * (found["total"] - last["step"]))
    return found


def headline(results: dict, metrics: list | None) -> dict | None:
    """The first comparison of the recipe's metrics (else the first at all): base → tuned with its verdict."""
    comparison = results.get("comparison") or {}
    models = results.get("models") or {}
    names = [name for name in (metrics or []) if name in comparison] or list(comparison)
    if not names:
        return None
    name = names[0]
    entry = comparison[name]
    value = lambda model: ((models.get(model) or {}).get("metrics") or {}).get(name)  # noqa: E731
    return {"metric": name, "base": value("base"), "tuned": value("tuned"), "delta": entry.get("delta"),
            "low": entry.get("low"), "high": entry.get("high"), "verdict": entry.get("verdict")}


@dataclass
class Summary:
    name: str
    recipe_name: str
    method: str
    objective: str
    status: str  # preparing, training, evaluating, exporting, done, failed, stopped, prepared, trained, unreadable
    error: str | None
    step: int | None
    total: int | None
    eta_seconds: float | None
    headline: dict | None
    started: float
    seconds: float | None
    running: bool


def stage(run: RunDir) -> str:
    """How far the run's files go: the next stage a running job is in, or the last one done."""
    if not run.fingerprint_file.is_file():  # written once the data is prepared
        return "preparing"
    if not (run.model / "training.json").is_file():
        return "training"
    if not (run.eval / "results.json").is_file():
        return "evaluating"
    return "exporting" if not run.export.is_dir() else "done"


def summarise(run: RunDir) -> Summary:
    """The run as the runs page lists it; status `unreadable` (with why) when one of its files can't be read
    (cut short by a crash, not UTF-8), so one broken run doesn't take the page down for the others."""
    try:
        return _summary(run)
    except (DomaintuneError, OSError, ValueError) as error:  # ValueError: a file that is not UTF-8
        return Summary(**_labels(run, raw_recipe(run)), status="unreadable", error=str(error), step=None, total=None,
                       eta_seconds=None, headline=None, started=run.recipe_file.stat().st_mtime, seconds=None,
                       running=False)


def _labels(run: RunDir, recipe: dict) -> dict:
    """What names a run in the list: its folder, its recipe's name, method and objective."""
    return {"name": run.root.name, "recipe_name": str(recipe.get("name", run.root.name)),
            "method": name_of(recipe.get("method")),
            "objective": name_of(recipe.get("objective")) if recipe.get("objective") else "sft"}


def _summary(run: RunDir) -> Summary:
    recipe = raw_recipe(run)
    records = read_jsonl(run.metrics) if run.metrics.is_file() else []
    job, result = jobs.job_files(run.root)
    running = jobs.is_running(run.root)
    where = stage(run)
    error = None
    if running:  # an evaluate or export job on a finished run is in that stage, whatever the files say
        status = {"evaluate": "evaluating", "export": "exporting"}.get((job or {}).get("task"), where)
    elif result:
        status, error = result["state"], result.get("error")
    elif job:  # launched, not running, no word from the job: killed (or the machine restarted)
        status, error = "failed", "the job's process ended without saying how (killed?); see workbench/job.log"
    else:  # made by the CLI
        status = {"preparing": "new", "training": "prepared", "evaluating": "trained"}.get(where, where)
    started = (job or {}).get("started") or run.recipe_file.stat().st_mtime
    ended = (result or {}).get("ended")
    seconds = (time.time() if running else ended or started) - started if (running or ended) else None
    if seconds is None and records:
        seconds = (run.training_summary() or {}).get("runtime_seconds")
    found = progress(records) if status == "training" or records else {}
    evaluation = recipe.get("evaluation") if isinstance(recipe.get("evaluation"), dict) else {}
    metrics = evaluation.get("metrics") if isinstance(evaluation.get("metrics"), list) else None
    return Summary(
        **_labels(run, recipe), status=status, error=error, step=found.get("step"), total=found.get("total"),
        eta_seconds=found.get("eta_seconds") if running else None,
        headline=headline(read_json(run.eval / "results.json", {}) or {}, metrics), started=started, seconds=seconds,
        running=running,
    )


def list_runs(runs: Path) -> list[RunDir]:
    """Every run directly under the runs folder, newest first."""
    if not runs.is_dir():
        return []
    found = [RunDir(path.resolve()) for path in runs.iterdir() if (path / "recipe.yaml").is_file()]
    return sorted(found, key=lambda run: run.recipe_file.stat().st_mtime, reverse=True)


def matches(summary: Summary, query: str, status: str) -> bool:
    """The runs page's filter: `query` in the name, method or objective; `status` exact (or empty)."""
    if status and summary.status != status:
        return False
    text = f"{summary.name} {summary.recipe_name} {summary.method} {summary.objective}".lower()
    return all(word in text for word in query.lower().split())


GGUF_KINDS = ("f16", "q8_0", "bf16", "f32")  # what llama.cpp's converter writes itself
GGUF_Q4_KINDS = ("q4_k_m", "q4_0", "q4_1")  # these need llama-quantize too


def export_choices(run: RunDir) -> dict | None:
    """What the export button can write for this trained run, as its recipe and this machine allow:
    {"own": the objective's own layout (no choices), "adapter": bool, "merged": bool, "blocker": why not
    merged, "gguf": kinds (with an Ollama Modelfile), "gguf_missing": why none}; None before training."""
    import shutil

    from domaintune.models.gguf_converter import INSTALL, converter_folder, converter_installed
    from domaintune.models.loading import is_adapter_folder, merge_blocker
    from domaintune.objectives import hook

    if not (run.model / "training.json").is_file():
        return None
    recipe = run.recipe()
    if hook(recipe.objective, "export"):
        return {"own": True}
    blocker = merge_blocker(run.model)
    converter = converter_installed()
    kinds = [*GGUF_KINDS, *(GGUF_Q4_KINDS if shutil.which("llama-quantize") else ())] if converter else []
    return {"own": False, "adapter": is_adapter_folder(run.model), "merged": blocker is None, "blocker": blocker,
            "gguf": kinds if blocker is None else [], "dtype": recipe.export.dtype,
            "gguf_missing": None if converter else f"llama.cpp's converter is not installed: "
                                                   f"{INSTALL.format(folder=converter_folder())}"}


CHART_WIDTH = 420  # pixels of the longest bar in the data card's rows chart


def rows_bars(card: dict) -> list[dict]:
    """The data card's rows chart: the rows left after each preparation stage (the data report's funnel),
    then each split's rows, as bars on one scale."""
    from domaintune.data.data_report import funnel

    bars = [{"kind": "stage", "label": stage["stage"], "rows": stage["after"]} for stage in funnel(card)]
    bars += [{"kind": "split", "label": part, "rows": rows} for part, rows in (card.get("splits") or {}).items()]
    top = max((bar["rows"] for bar in bars), default=0) or 1
    return [{**bar, "width": round(CHART_WIDTH * bar["rows"] / top, 1)} for bar in bars]
