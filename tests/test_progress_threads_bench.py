"""Progress in a log file, threads that follow the machine's load, and the bench's MFU peak."""
import importlib.util
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from domaintune.config import TrainingConfig, runtime
from domaintune.training.callbacks import RichProgressCallback, ThreadsCallback

ROOT = Path(__file__).resolve().parents[1]


def state(step: int, tokens: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=10, num_input_tokens_seen=tokens, is_world_process_zero=True)


def test_progress_writes_plain_lines_when_output_is_not_a_terminal():
    out = io.StringIO()
    progress = RichProgressCallback(Console(file=out, force_terminal=False, width=200))
    progress.on_train_begin(None, state(0, 0), None)
    progress.on_step_end(None, state(5, 500), None)
    progress.on_log(None, state(5, 500), None, logs={"loss": 1.23456})
    progress.on_log(None, state(5, 500), None, logs={"eval_loss": 0.98765})
    progress.on_train_end(None, state(10, 1000), None)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 5/10 · loss 1.2346 · val - · ") and "tok/s" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("step 5/10 · loss 1.2346 · val 0.9877")
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in a log file


def test_a_terminal_gets_the_live_bar_not_lines():
    out = io.StringIO()
    progress = RichProgressCallback(Console(file=out, force_terminal=True, width=120))
    progress.on_train_begin(None, state(0, 0), None)
    progress.on_log(None, state(5, 500), None, logs={"loss": 1.0})
    progress.on_train_end(None, state(10, 1000), None)
    assert "step 5/10 · loss" not in out.getvalue() and "training" in out.getvalue()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to see the count change")
def test_auto_threads_are_re_decided_at_each_validation(monkeypatch):
    out = io.StringIO()
    callback = ThreadsCallback(TrainingConfig(threads="auto"), Console(file=out))
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(runtime, "busy_cores", lambda: 0)  # the other job has ended
        callback.on_evaluate(None, None, None)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert "threads: 1 → " in out.getvalue()
        monkeypatch.setattr(runtime, "busy_cores", lambda: len(os.sched_getaffinity(0)))  # all busy again
        callback.on_evaluate(None, None, None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_explicit_threads_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime, "busy_cores", lambda: 0)
    torch.set_num_threads(1)
    ThreadsCallback(TrainingConfig(threads=1), Console(file=io.StringIO())).on_evaluate(None, None, None)
    assert torch.get_num_threads() == 1


def test_bench_mfu_divides_by_the_peak_of_the_precision_that_ran():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    peaks = {"float32": 100.0, "bfloat16": 400.0}
    fp32 = {"tokens_per_second": 1000.0, "bf16": False}
    bf16 = {"tokens_per_second": 1000.0, "bf16": True}
    # LoRA: 4 FLOPs per parameter per token; 10M parameters at 1,000 tok/s is 40 GFLOPS.
    assert bench.model_flops_utilisation(fp32, "lora", 10_000_000, peaks) == pytest.approx(0.4)
    assert bench.model_flops_utilisation(bf16, "lora", 10_000_000, peaks) == pytest.approx(0.1)


def test_the_overhead_bench_times_callback_events_and_puts_the_handler_back(monkeypatch):
    import time

    from transformers.trainer_callback import CallbackHandler, TrainerCallback, TrainerControl, TrainerState

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from step_overhead import CallbackTime

    class SlowLog(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            time.sleep(0.02)

    handler = CallbackHandler([SlowLog()], model=None, processing_class=None, optimizer=None, lr_scheduler=None)
    original = CallbackHandler.call_event
    with CallbackTime() as timing:
        handler.on_log(None, TrainerState(), TrainerControl(), logs={})
        handler.on_step_end(None, TrainerState(), TrainerControl())
    assert timing.seconds["on_log"] >= 0.02 > timing.seconds["on_step_end"]
    assert CallbackHandler.call_event is original
