"""Runs launched from the workbench execute as separate processes, so closing the page or restarting the
app never stops them, and a restarted app finds them again from their run directory:

  RUN/workbench/job.json     {"pid", "started", "resume"}: written by the app when it starts the job
  RUN/workbench/job.log      the job's output (the CLI's progress lines, errors)
  RUN/workbench/result.json  {"state": done|failed|stopped, "error", "ended"}: written by the job as it ends

The job (`python -m domaintune.workbench.jobs RUN [--resume]`) runs what `domaintune run` runs, through the
same API, on a run directory the app already made: prepare (unless prepared), train (or resume from the
last checkpoint), evaluate, export. Stop sends SIGTERM to the job's process group.
"""
from __future__ import annotations

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


def launch(root: Path, resume: bool = False) -> int:
    """Start the job for the run at `root` in its own session (it outlives the app); returns its pid."""
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    (folder / "result.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", MODULE, str(root), *(["--resume"] if resume else [])]
    with (folder / "job.log").open("a", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=root)
    write_json(folder / "job.json", {"pid": process.pid, "started": time.time(), "resume": resume})
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


def run_job(root: Path, resume: bool) -> dict:
    """Prepare, train (or resume), evaluate and export the run; the result as written to result.json."""
    from rich.console import Console

    from domaintune import api
    from domaintune.core.errors import DomaintuneError
    from domaintune.storage.rundir import RunDir

    console = Console(stderr=True)
    run = RunDir.open(root)
    signal.signal(signal.SIGTERM, _interrupt)  # stop: a KeyboardInterrupt, as Ctrl+C in a terminal
    try:
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
    root = Path(argv[0]).resolve()
    result = run_job(root, resume="--resume" in argv[1:])
    return {"done": 0, "stopped": 130}.get(result["state"], 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
