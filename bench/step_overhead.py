"""Per-step overhead: what domaintune's training loop costs around the model, beside the plain Trainer.

On a 2-layer cut of SmolLM2 (random weights, the bundled tokenizer) the model's own work is a few
milliseconds, so what is left of a step is the loop around it: the data collator, the callbacks (metrics
file, TensorBoard, progress, throughput), logging, and host reads of device values. On the same rows,
batch, steps and learning rate:

  hf            transformers Trainer + peft LoRA, padding to the longest (the baseline)
  dt-unpacked   domaintune.train with training.packing false (issue 19's 0.79x was measured this way)
  dt-packed     domaintune.train with its defaults

Each configuration runs in this process, one after the other, logging every step as train_throughput.py
does on a CPU (every fifth on a GPU). Printed per configuration: seconds per step after the warm-up, the
time spent in Trainer callbacks per step (every event timed), and from a second, shorter run of each a
torch.profiler table of the operators with the most host time over ten steps. Results: bench/results/step_overhead[_cuda].json.

    python bench/step_overhead.py [--device cpu|cuda] [--steps 60] [--batch 8] [--rows 200]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from train_throughput import RESULTS, WARMUP_STEPS, copy_run, prepare, require_device, run_domaintune, run_hf_baseline
from transformers import TrainerCallback, trainer_callback

from domaintune.config.runtime import cpu_description

PROFILED_STEPS = 10


class CallbackTime:
    """Wall time inside the Trainer's callback events, per event name, while installed."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.original = trainer_callback.CallbackHandler.call_event

    def __enter__(self):
        original, seconds = self.original, self.seconds

        def timed(handler, event, args, state, control, **kwargs):
            started = time.perf_counter()
            try:
                return original(handler, event, args, state, control, **kwargs)
            finally:
                seconds[event] += time.perf_counter() - started

        trainer_callback.CallbackHandler.call_event = timed
        return self

    def __exit__(self, *exc):
        trainer_callback.CallbackHandler.call_event = self.original


class OperatorProfile(TrainerCallback):
    """torch.profiler over PROFILED_STEPS steps after the warm-up; `table` holds the top operators by host time."""

    def __init__(self, device: str):
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.table = ""
        self.profiler = torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=WARMUP_STEPS, warmup=1, active=PROFILED_STEPS),
            on_trace_ready=self.keep)

    def keep(self, profiler):
        self.table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)

    def on_train_begin(self, args, state, control, **kwargs):
        self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.profiler.stop()


def seconds_per_step(marks: list[float]) -> float:
    return (marks[-1] - marks[WARMUP_STEPS - 1]) / (len(marks) - WARMUP_STEPS)


def train(name: str, template: Path, args, steps: int, callbacks: tuple = ()) -> dict:
    run_dir = copy_run(template, f"{name}-{steps}")
    if name == "hf":
        return run_hf_baseline(run_dir, "lora", steps, args.batch, 1e-3, bf16=args.device == "cuda", device=args.device,
                               callbacks=callbacks)
    return run_domaintune(run_dir, "lora", steps, args.batch, 1e-3, args.device, packing=name == "dt-packed",
                          callbacks=callbacks)


def measure(name: str, template: Path, args) -> dict:
    """A timed run with every callback event timed, then a shorter profiled run (the profiler's own work
    at its step marks would otherwise count as the run's)."""
    with CallbackTime() as callbacks:
        result = train(name, template, args, args.steps)
    profile = OperatorProfile(args.device)
    train(name, template, args, WARMUP_STEPS + 1 + PROFILED_STEPS, callbacks=(profile,))
    return {"seconds_per_step": seconds_per_step(result["marks"]),
            "callback_ms_per_step": 1000 * sum(callbacks.seconds.values()) / args.steps,
            "callback_ms_by_event": {event: round(1000 * total / args.steps, 3)
                                     for event, total in sorted(callbacks.seconds.items(), key=lambda item: -item[1])},
            "profile": profile.table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    require_device(args.device)
    template = prepare(args.rows, Path(tempfile.mkdtemp(prefix="dt-overhead-")), args.device, tiny=True)
    results = {name: measure(name, template, args) for name in ("hf", "dt-unpacked", "dt-packed")}
    baseline = results["hf"]["seconds_per_step"]
    print(f"{'config':12} {'ms/step':>8} {'× hf':>6} {'callbacks ms/step':>18}  slowest events")
    for name, result in results.items():
        events = ", ".join(f"{event} {ms:.2f}" for event, ms in list(result["callback_ms_by_event"].items())[:3])
        print(f"{name:12} {1000 * result['seconds_per_step']:8.1f} {baseline / result['seconds_per_step']:6.2f} "
              f"{result['callback_ms_per_step']:18.2f}  {events}")
    for name, result in results.items():
        print(f"\n{name}, {PROFILED_STEPS} steps, operators by host time:\n{result['profile']}")
    out = RESULTS.with_name(f"step_overhead{'_cuda' if args.device == 'cuda' else ''}.json")
    out.write_text(json.dumps({"machine": cpu_description() if args.device == "cpu" else "cuda",
                               "settings": vars(args), "results": results}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
