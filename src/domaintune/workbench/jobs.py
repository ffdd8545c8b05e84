"""Runs launched from the workbench execute as separate processes, so closing the page or restarting the
app never stops them, and a restarted app finds them again from their run directory:

  RUN/workbench/job.json     {"pid", "started", "resume", "task"}: written by the app when it starts the job
  RUN/workbench/job.log      the job's output (the CLI's progress lines, errors)
  RUN/workbench/result.json  {"state": done|failed|stopped, "error", "ended"}: written by the job as it ends

The job (`python -m domaintune.workbench.jobs RUN [--resume] [--task T] [--export JSON]`) runs, through the
same API as the CLI, on a run directory the app already made:
  run       what `domaintune run` runs: prepare (unless prepared), train (or resume from the last
            checkpoint), evaluate, export;
  evaluate  `domaintune evaluate RUN` (again, for a run evaluated before);
  export    `domaintune export RUN`, with the export section chosen on the page (JSON) instead of the recipe's.
Stop sends SIGTERM to the job's process group.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import psutil

from domaintune.storage.jsonl import read_json, write_json

FOLDER = "workbench"
MODULE = "domaintune.workbench.jobs"
TASKS = ("run", "evaluate", "export")


def job_files(root: Path) -> tuple[dict | None, dict | None]:
    """(job.json, result.json) of a run; None for each one missing."""
    return read_json(root / FOLDER / "job.json"), read_json(root / FOLDER / "result.json")


def _job_process(root: Path) -> psutil.Process | None:
    """The job's process, if it still runs: the recorded pid must still be this run's job, not
    another program that got the number since."""
    job, _ = job_files(root)
    if not job:
        return None
    try:
        process = psutil.Process(job["pid"])
        command = process.cmdline()
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.Error, KeyError, TypeError):
        return None
    return process if MODULE in command and str(root) in command else None


def is_running(root: Path) -> bool:
    return _job_process(root) is not None


def launch(root: Path, resume: bool = False, task: str = "run", export: dict | None = None) -> int:
    """Start the job for the run at `root` in its own session (it outlives the app); returns its pid.
    `export`: the export section to write instead of the recipe's (task export)."""
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    (folder / "result.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", MODULE, str(root), "--task", task, *(["--resume"] if resume else []),
               *(["--export", json.dumps(export)] if export is not None else [])]
    with (folder / "job.log").open("a", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=root)
    write_json(folder / "job.json", {"pid": process.pid, "started": time.time(), "resume": resume, "task": task})
    return process.pid


def stop(root: Path) -> bool:
    """SIGTERM to the job's process group (the job and whatever it started); False when it isn't running."""
    process = _job_process(root)
    if process is None:
        return False
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_job(root: Path, resume: bool, task: str = "run", export: dict | None = None) -> dict:
    """The task on the run (see the module's description); the result as written to result.json."""
    from rich.console import Console

    from domaintune import api
    from domaintune.config import ExportConfig
    from domaintune.core.errors import DomaintuneError
    from domaintune.storage.rundir import RunDir

    console = Console(stderr=True)
    run = RunDir.open(root)
    signal.signal(signal.SIGTERM, _interrupt)  # stop: a KeyboardInterrupt, as Ctrl+C in a terminal
    try:
        if task == "evaluate":
            api.evaluate(run.root, console=console)
        elif task == "export":
            api.export_model(run.root, console=console, export=ExportConfig(**export) if export is not None else None)
        else:
            if not run.fingerprint_file.is_file():  # written once the data is prepared
                api.prepare_data(run.recipe(), run=run, console=console)
            if not run.training_summary():
                api.train(run.root, resume=resume and run.last_checkpoint() is not None, console=console)
            if not run.results():
                api.evaluate(run.root, console=console)
            api.export_model(run.root, console=console)
        result = {"state": "done", "error": None}
    except KeyboardInterrupt:
        result = {"state": "stopped", "error": None}
        console.print("stopped; resume continues from the last checkpoint")
    except DomaintuneError as error:
        result = {"state": "failed", "error": str(error)}
        console.print(f"error: {error}", markup=False, highlight=False)
    except Exception as error:  # noqa: BLE001 - any crash must end as a failed run with its reason, not a silent death
        traceback.print_exc()
        result = {"state": "failed", "error": f"{type(error).__name__}: {error}"}
    result["ended"] = time.time()
    write_json(root / FOLDER / "result.json", result)
    return result


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("root", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--task", choices=TASKS, default="run")
    parser.add_argument("--export", type=json.loads, default=None)
    arguments = parser.parse_args(argv)
    result = run_job(arguments.root.resolve(), arguments.resume, arguments.task, arguments.export)
    return {"done": 0, "stopped": 130}.get(result["state"], 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
