import json
import os
from contextlib import nullcontext

import pytest
from transformers import TrainerCallback

import domaintune
from domaintune.storage.rundir import RunDir


def metric_lines(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


def train_losses(run: RunDir) -> list[float]:
    return [line["loss"] for line in metric_lines(run) if "loss" in line]


@pytest.mark.parametrize("method", [{"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, {"name": "full"}])
def test_training_lowers_the_loss(tiny_recipe, method):
    tiny_recipe["method"] = method
    tiny_recipe["training"]["lr"] = 2e-2 if method["name"] == "lora" else 2e-3
    run = domaintune.train(tiny_recipe)
    losses = train_losses(run)
    assert len(losses) >= 4
    assert losses[-1] < losses[0] * 0.7
    summary = json.loads((run.model / "training.json").read_text())
    assert summary["global_step"] == 12
    if method["name"] == "lora":
        assert (run.model / "adapter_model.safetensors").exists()
        assert summary["parameters"]["share"] < 0.5
    else:
        assert (run.model / "model.safetensors").exists()
        assert summary["parameters"]["share"] == 1.0
    # Validation ran on schedule and TensorBoard got events.
    assert [line["step"] for line in metric_lines(run) if "eval_loss" in line] == [4, 8, 12]
    assert any(run.tensorboard.iterdir())


def test_checkpoints_keep_the_last_k(tiny_recipe):
    tiny_recipe["training"]["keep_checkpoints"] = 2
    run = domaintune.train(tiny_recipe)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-12", "checkpoint-8"]


def test_early_stopping_stops_when_validation_stalls(tiny_recipe):
    # A zero learning rate can never improve validation loss, so patience 1 stops at the 2nd evaluation.
    tiny_recipe["training"].update(
        lr=1e-12, max_steps=40, eval_every=2, save_every=2, early_stopping={"patience": 1, "min_delta": 0.01}
    )
    run = domaintune.train(tiny_recipe)
    summary = json.loads((run.model / "training.json").read_text())
    assert summary["stopped_early"] is True
    assert summary["global_step"] == 4


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_resume_continues_from_the_last_checkpoint(tiny_recipe):
    with pytest.raises(KeyboardInterrupt):
        domaintune.train(tiny_recipe, callbacks=[CrashAt(6)])
    run = RunDir.latest(domaintune.load(tiny_recipe))
    assert run.last_checkpoint().name == "checkpoint-4"
    assert not run.model.exists()

    counter = StepCounter()
    resumed = domaintune.train(tiny_recipe, resume=True, callbacks=[counter])
    assert resumed.root == run.root
    # Steps 5..12 ran again after checkpoint-4; none of 1..4 were repeated.
    assert counter.steps == list(range(5, 13))
    steps = [line["step"] for line in metric_lines(run) if "loss" in line]
    assert steps == [2, 4, 6, 8, 10, 12]
    assert json.loads((run.model / "training.json").read_text())["global_step"] == 12


def test_resume_finds_the_run_of_this_recipe_and_refuses_a_changed_one(tiny_recipe, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from domaintune.cli import app
    from domaintune.core.errors import DomaintuneError

    tiny_recipe["training"].update(max_steps=2, save_every=2, eval_every=2)
    first, _ = domaintune.prepare_data(tiny_recipe)
    other, _ = domaintune.prepare_data({**tiny_recipe, "seed": 7})  # another recipe of the same name, newer
    # --resume picks the newest run of *this* recipe, not the newest of the name.
    assert domaintune.train(tiny_recipe, resume=True).root == first.root

    with pytest.raises(DomaintuneError) as refused:
        domaintune.train(tiny_recipe, resume=True, overrides=["training.lr=0.5", "method.r=4"])
    assert "training.lr" in str(refused.value) and "method.r" in str(refused.value) and "--force" in str(refused.value)
    assert "training.max_steps" not in str(refused.value)
    # A run directory with --set: the same check (the overrides used to be ignored without a word).
    with pytest.raises(DomaintuneError, match="training.lr"):
        domaintune.train(first.root, resume=True, overrides=["training.lr=0.5"])

    # The data files the recipe names changed since the run was prepared.
    source = tmp_path / "train.jsonl"
    source.write_text(source.read_text() + source.read_text().splitlines()[0] + "\n")
    with pytest.raises(DomaintuneError, match=r"data changed.*train\.jsonl"):
        domaintune.train(tiny_recipe, resume=True)

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe))
    result = CliRunner().invoke(app, ["train", str(recipe_file), "--resume"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "data changed" in result.output

    # --force resumes anyway, with the recipe as it is now.
    resumed = domaintune.train(tiny_recipe, resume=True, overrides=["training.lr=0.5"], force=True)
    assert resumed.root in (first.root, other.root)
    assert resumed.recipe().training.lr == 0.5
    assert domaintune.train(tiny_recipe, resume=True, overrides=["training.lr=0.5"]).root == resumed.root


def test_a_checkpoint_that_does_not_validate_is_skipped_and_reported(tmp_path):
    import torch
    from rich.console import Console
    from safetensors.torch import save_file

    run = RunDir(tmp_path)
    for step in (4, 8, 12):
        folder = run.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"w": torch.ones(64, 64)}, str(folder / "adapter_model.safetensors"))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    # A kill during a save: a truncated trainer state, and weights cut short.
    state = run.checkpoints / "checkpoint-12" / "trainer_state.json"
    state.write_text(state.read_text()[:20])
    weights = run.checkpoints / "checkpoint-8" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    console = Console(record=True, width=300)
    assert run.last_checkpoint(console).name == "checkpoint-4"
    report = console.export_text()
    assert "checkpoint-12" in report and "trainer_state.json" in report
    assert "checkpoint-8" in report and "adapter_model.safetensors" in report


def test_a_gpu_run_reads_nothing_back_between_logging_steps_and_a_cpu_run_is_as_before():
    from transformers import TrainingArguments

    from domaintune.training.trainer import per_step_settings

    settings = per_step_settings(cuda=True, packing=True)
    gpu = TrainingArguments(output_dir="unused", use_cpu=True, **settings)  # all of them valid arguments
    # Each of these reads a device value back every step: the loss's NaN check, the token count.
    assert gpu.logging_nan_inf_filter is False and gpu.include_num_input_tokens_seen == "no"
    # Pinned batches copied without blocking (a pageable copy waits for the GPU like a sync).
    assert settings["dataloader_pin_memory"] and gpu.accelerator_config.non_blocking
    cpu = TrainingArguments(output_dir="unused", use_cpu=True, **per_step_settings(cuda=False, packing=True))
    assert (cpu.logging_nan_inf_filter, cpu.include_num_input_tokens_seen, cpu.dataloader_num_workers,
            cpu.dataloader_pin_memory) == (True, "all", 0, False)
    assert per_step_settings(cuda=False, packing=False)["include_num_input_tokens_seen"] == "non_padding"


def test_report_to_chooses_the_trackers_and_refuses_a_missing_one(tiny_recipe, monkeypatch):
    """training.report_to: tensorboard is domaintune's own callback; mlflow and trackio go to the Trainer,
    MLflow into a local store in the run directory; a tracker that isn't installed is refused as training starts."""
    import importlib.util

    from domaintune.api import load
    from domaintune.core.errors import DomaintuneError
    from domaintune.training.trainer import training_arguments

    assert load(tiny_recipe).training.report_to == ["tensorboard"]
    tiny_recipe["training"]["report_to"] = "none"
    run = domaintune.train(tiny_recipe)  # no tracker: no TensorBoard folder either
    assert not run.tensorboard.exists() or not any(run.tensorboard.iterdir())

    tiny_recipe["training"]["report_to"] = ["tensorboard", "mlflow"]
    recipe = load(tiny_recipe)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(DomaintuneError, match=r"training.report_to: mlflow is not installed; pip install 'domaintune\[mlflow\]'"):
        training_arguments(recipe, run, has_validation=True, bf16=False)
    # Installed (pretended here: the Trainer only imports it when training starts): passed through, stored locally.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "mlflow" else real(name, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    args = training_arguments(recipe, run, has_validation=True, bf16=False)
    assert args.report_to == ["mlflow"] and args.run_name == run.root.name
    assert os.environ["MLFLOW_TRACKING_URI"] == (run.root / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")  # the user's own server wins
    training_arguments(recipe, run, has_validation=True, bf16=False)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"
    with pytest.raises(DomaintuneError, match="trackio is not installed") if real("trackio") is None else nullcontext():
        training_arguments(load({**tiny_recipe, "training": {**tiny_recipe["training"], "report_to": "trackio"}}),
                           run, has_validation=True, bf16=False)
