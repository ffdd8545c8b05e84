"""Crash and resume: training is SIGKILLed at random moments (during a checkpoint save too), resumed, and
must end with the same adapter weights as an uninterrupted run and a metrics.jsonl without gaps or repeats.

The training processes are forked from the test process, which has torch and the tiny model loaded
already, so each start costs well under a second."""
import json
import multiprocessing
import os
import random
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

import domaintune
from domaintune.storage.rundir import RunDir

SAVE_PAUSE = 0.3  # seconds each checkpoint save is slowed by, inside the save, so a kill can land there


def train_to_the_end(root: str, slow_saves: bool) -> None:
    """The forked training process: resume the run (from nothing at first) until it is done or killed."""
    from rich.console import Console
    from transformers import Trainer

    from domaintune.workflows import pipeline

    if slow_saves:
        save_rng_state = Trainer._save_rng_state

        def slowly(self, output_dir):
            time.sleep(SAVE_PAUSE)  # the weights and optimizer are written; the RNG and trainer state are not
            save_rng_state(self, output_dir)

        Trainer._save_rng_state = slowly
    pipeline.train(root, resume=True, console=Console(quiet=True))
    os._exit(0)  # skip the parent's pytest teardown inherited by the fork


def start(run: RunDir, slow_saves: bool = True):
    process = multiprocessing.get_context("fork").Process(target=train_to_the_end, args=(str(run.root), slow_saves))
    process.start()
    return process


def kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join()


def saving(run: RunDir) -> bool:
    """A checkpoint save is under way (its staging folder exists and holds the checkpoint being written)."""
    staging = run.checkpoints / ".partial"
    return staging.is_dir() and any(staging.iterdir())


def kill_when(process, ready, timeout: float = 30) -> bool:
    """SIGKILL the process once `ready()` is true; False when it finished first."""
    deadline = time.monotonic() + timeout
    while process.is_alive() and time.monotonic() < deadline:
        if ready():
            kill(process)
            return True
        time.sleep(0.005)
    process.join()
    return False


def adapter(run: RunDir) -> dict[str, torch.Tensor]:
    return load_file(str(run.model / "adapter_model.safetensors"))


def logged_steps(run: RunDir) -> dict[str, list[int]]:
    lines = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return {key: [line["step"] for line in lines if key in line] for key in ("loss", "eval_loss")}


@pytest.fixture
def crash_recipe(tiny_recipe):
    tiny_recipe["training"].update(max_steps=10, save_every=2, eval_every=4, log_every=1, keep_checkpoints=2)
    return tiny_recipe


def test_killed_training_resumes_to_the_same_weights_and_metrics(crash_recipe):
    reference, _ = domaintune.prepare_data(crash_recipe)
    started = time.monotonic()
    process = start(reference, slow_saves=False)
    process.join()
    assert process.exitcode == 0
    duration = time.monotonic() - started
    expected, expected_steps = adapter(reference), logged_steps(reference)
    assert expected_steps["loss"] == list(range(1, 11)) and expected_steps["eval_loss"] == [4, 8, 10]

    for seed in range(3):
        rng = random.Random(seed)
        run, _ = domaintune.prepare_data(crash_recipe)
        kills = 0
        # Seed 0 is killed in the middle of checkpoint saves, the others at random moments.
        for _attempt in range(2):
            process = start(run)
            if seed == 0:
                killed = kill_when(process, lambda: saving(run))
            else:
                moment = time.monotonic() + rng.uniform(0.1, 0.8) * duration
                killed = kill_when(process, lambda: time.monotonic() >= moment)
            kills += killed
        assert kills, f"seed {seed}: training finished before any kill"
        process = start(run, slow_saves=False)
        process.join()
        assert process.exitcode == 0, f"seed {seed}: the resumed training failed"
        got = adapter(run)
        assert got.keys() == expected.keys()
        difference = max((got[name] - expected[name]).abs().max().item() for name in expected)
        assert difference <= 1e-6, f"seed {seed}: weights differ by {difference}"
        assert logged_steps(run) == expected_steps, f"seed {seed}: metrics.jsonl has gaps or repeats"
        assert not (run.checkpoints / ".partial").exists()
        assert sorted(path.name for path in run.root.iterdir() if path.name.startswith(".")) == []


def resume_without_the_final_model(run: RunDir, checkpoint: str) -> dict[str, list[int]]:
    """Train `run` to its end, delete its final model (what a kill after `checkpoint`'s save and before
    the final one leaves), resume: the same adapter bit for bit and the same logged steps. Returns those."""
    process = start(run, slow_saves=False)
    process.join()
    expected, expected_steps = adapter(run), logged_steps(run)
    assert (run.checkpoints / checkpoint).is_dir()
    shutil.rmtree(run.model)

    process = start(run, slow_saves=False)
    process.join()
    assert process.exitcode == 0
    got = adapter(run)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert logged_steps(run) == expected_steps
    return expected_steps


def test_a_kill_after_the_last_checkpoint_resumes_without_training_further(crash_recipe):
    """The last step's checkpoint is written and the final model is not: resuming loads that checkpoint.
    transformers alone would train a step past max_steps (10 ends mid-epoch: 48 rows, 4 per step), which a
    constant learning rate makes visible in the weights."""
    crash_recipe["training"]["lr_scheduler"] = "constant"
    run, _ = domaintune.prepare_data(crash_recipe)
    resume_without_the_final_model(run, "checkpoint-10")


def test_a_kill_after_early_stopping_resumes_without_training_further(crash_recipe):
    """Early stopping ends training at step 8 (a min_delta no validation loss can beat, patience 1), and
    the final model is not saved: resuming ends at step 8 too, with the best checkpoint's weights."""
    crash_recipe["training"].update(early_stopping={"patience": 1, "min_delta": 100.0}, save_every=4)
    run, _ = domaintune.prepare_data(crash_recipe)
    assert resume_without_the_final_model(run, "checkpoint-8")["eval_loss"] == [4, 8]


def test_a_finished_run_resumed_with_more_steps_trains_them(crash_recipe):
    """`train RUN --resume --force --set training.max_steps=14`: from the last checkpoint to the new end (it
    stopped at the old one, with the recipe saying the new one)."""
    run = domaintune.train(crash_recipe)
    assert json.loads((run.model / "training.json").read_text())["global_step"] == 10
    domaintune.train(run.root, resume=True, force=True, overrides=["training.max_steps=14"])
    assert json.loads((run.model / "training.json").read_text())["global_step"] == 14
    assert logged_steps(run)["loss"][-1] == 14
