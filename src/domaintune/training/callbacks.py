"""Trainer callbacks: a metrics.jsonl log, progress with loss, speed and ETA (a rich bar on a terminal,
plain lines in a log file or pipe), and the thread count re-decided as the machine's load changes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from domaintune.config.runtime import configure_threads
from domaintune.storage.jsonl import read_jsonl, write_jsonl
from domaintune.storage.rundir import RunDir
from domaintune.training.forecast import duration


class MetricsLogCallback(TrainerCallback):
    """Appends every Trainer log (train loss, eval loss, learning rate, ...) as one JSON line. Training
    that resumes from a checkpoint first drops the lines logged after it (and a line cut short by a
    kill): those steps run again and log again, so each step is in the file once."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [record for record in read_jsonl(self.path) if record.get("step", 0) <= state.global_step]
        partial = self.path.with_name(f".{self.path.name}.partial")
        write_jsonl(partial, kept)
        os.replace(partial, self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        # max_steps and the wall time let a reader (the workbench) show step/total, ETA and tokens/s.
        record = {"step": state.global_step, "max_steps": state.max_steps, "time": round(time.time(), 3),
                  "epoch": round(state.epoch or 0.0, 4), **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class RichProgressCallback(TrainerCallback):
    """Training progress: step, latest training and validation loss, tokens/s and the time left. On a
    terminal a live bar; where output goes to a file or a pipe (nohup, CI, a scheduler's log) a plain line
    at every logging step and validation, since a bar redrawn in place shows nothing there."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.train_loss = "-"
        self.eval_loss = "-"
        self.started = 0.0
        self.first_step = 0
        self.tokens_seen = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step, self.tokens_seen = time.perf_counter(), state.global_step, state.num_input_tokens_seen
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]} · val {task.fields[val]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            # The time-left estimate must smooth over validation pauses, not jump.
            speed_estimate_period=600,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss="-", val="-"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, loss=self.train_loss, val=self.eval_loss)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.train_loss = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            self.eval_loss = f"{logs['eval_loss']:.4f}"
        if self.progress is not None:
            self.progress.update(self.task, loss=self.train_loss, val=self.eval_loss)
        elif ("loss" in logs or "eval_loss" in logs) and state.is_world_process_zero:
            self.console.print(self.line(state), highlight=False, soft_wrap=True)

    def line(self, state) -> str:
        """'step 40/118 · loss 0.3166 · val 0.2620 · 65 tok/s · elapsed 10m24s · ETA 20m17s'."""
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.first_step
        parts = [f"step {state.global_step}/{state.max_steps}", f"loss {self.train_loss}", f"val {self.eval_loss}"]
        tokens = state.num_input_tokens_seen - self.tokens_seen
        if tokens and elapsed:
            parts.append(f"{tokens / elapsed:.0f} tok/s")
        parts.append(f"elapsed {duration(elapsed)}")
        if done:
            parts.append(f"ETA {duration(elapsed / done * (state.max_steps - state.global_step))}")
        return " · ".join(parts)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class ThreadsCallback(TrainerCallback):
    """`training.threads: auto` re-decided at every validation: a run started while another job kept a core
    busy takes that core back once the job ends (and gives it up when a new one starts)."""

    def __init__(self, config, console: Console):
        self.config = config
        self.console = console

    def on_evaluate(self, args, state, control, **kwargs):
        if self.config.threads != "auto":
            return
        before = torch.get_num_threads()
        after = configure_threads(self.config)
        if after != before:
            self.console.print(f"threads: {before} → {after} (the machine's load changed)", highlight=False)


def run_callbacks(run: RunDir, recipe, console: Console, callbacks: list | None, early_stopping=None) -> list:
    """What every trainer of a run gets: metrics.jsonl, the progress, the thread count, the caller's
    callbacks, and early stopping where it applies (`early_stopping`: the recipe's setting when there is
    validation data)."""
    from transformers import EarlyStoppingCallback

    found = [MetricsLogCallback(run.metrics), RichProgressCallback(console), ThreadsCallback(recipe.training, console),
             *(callbacks or [])]
    if early_stopping is not None:
        found.append(EarlyStoppingCallback(early_stopping_patience=early_stopping.patience,
                                           early_stopping_threshold=early_stopping.min_delta))
    return found
