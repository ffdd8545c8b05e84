"""Multi-process training: the generated accelerate config, and a real 2-process DDP run on the CPU."""
import json
import shutil

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

import domaintune
from domaintune.config import Recipe
from domaintune.core.errors import DomaintuneError
from domaintune.training.distributed import accelerate_config


def recipe_with(distributed: dict, **training) -> Recipe:
    return domaintune.load({"training": {"precision": "fp32", **training}, "distributed": distributed})


def test_ddp_on_a_cpu_machine_runs_cpu_processes(tmp_path):
    config = accelerate_config(recipe_with({"processes": 2}), gpus=0)
    assert config["use_cpu"] is True
    # accelerate starts MULTI_CPU processes only through mpirun; its torchrun launcher is the MULTI_GPU one.
    assert config["distributed_type"] == "MULTI_GPU"
    assert (config["num_processes"], config["num_machines"], config["machine_rank"]) == (2, 1, 0)
    assert config["main_process_port"] == 0  # accelerate picks a free port
    assert config["mixed_precision"] == "no"
    assert "fsdp_config" not in config and "deepspeed_config" not in config
    # accelerate itself reads the file.
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config_from_file(str(path))
    assert loaded.num_processes == 2 and loaded.use_cpu is True


def test_ddp_on_gpus_and_mixed_precision():
    config = accelerate_config(recipe_with({"processes": 4, "mixed_precision": "bf16"}, precision="auto"), gpus=4)
    assert config["distributed_type"] == "MULTI_GPU"
    assert config["use_cpu"] is False
    assert config["mixed_precision"] == "bf16"


def test_fsdp_options_are_mapped(tmp_path):
    recipe = recipe_with(
        {
            "backend": "fsdp",
            "processes": 2,
            "fsdp": {"sharding_strategy": "SHARD_GRAD_OP", "auto_wrap_policy": "SIZE_BASED_WRAP", "offload_params": True},
        }
    )
    config = accelerate_config(recipe, gpus=2)
    assert config["distributed_type"] == "FSDP"
    fsdp = config["fsdp_config"]
    assert fsdp["fsdp_sharding_strategy"] == "SHARD_GRAD_OP"
    assert fsdp["fsdp_auto_wrap_policy"] == "SIZE_BASED_WRAP"
    assert fsdp["fsdp_offload_params"] is True
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load_config_from_file(str(path)).fsdp_config == fsdp


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"zero_stage": 2, "offload_optimizer_device": "none", "offload_param_device": "none", "zero3_save_16bit_model": False}),
        (
            {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
            {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu", "zero3_save_16bit_model": True},
        ),
    ],
)
def test_deepspeed_options_are_mapped(options, expected):
    config = accelerate_config(recipe_with({"backend": "deepspeed", "processes": 8, "deepspeed": options}), gpus=8)
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"] == expected


def test_multi_node_settings():
    distributed = {"processes": 16, "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1"}
    config = accelerate_config(recipe_with(distributed), gpus=8)
    assert (config["num_processes"], config["num_machines"], config["machine_rank"]) == (16, 2, 1)
    assert (config["main_process_ip"], config["main_process_port"]) == ("10.0.0.1", 29500)
    assert config["rdzv_backend"] == "static" and config["same_network"] is True


@pytest.mark.parametrize("backend", ["fsdp", "deepspeed"])
def test_sharded_backends_need_gpus(backend):
    with pytest.raises(DomaintuneError, match=f"{backend} needs GPUs"):
        accelerate_config(recipe_with({"backend": backend, "processes": 2}), gpus=0)


def test_more_processes_than_gpus_is_an_error():
    with pytest.raises(DomaintuneError, match="4 processes per machine but 2 GPU"):
        accelerate_config(recipe_with({"processes": 4}), gpus=2)


@pytest.mark.parametrize(
    ("distributed", "training", "message"),
    [
        ({"procesess": 2}, {}, "distributed.procesess: unknown key"),
        ({"fsdp": {"sharding": "FULL_SHARD"}}, {}, "distributed.fsdp.sharding: unknown key"),
        ({"backend": "horovod"}, {}, "distributed.backend"),
        ({"processes": 3, "num_machines": 2, "main_process_ip": "h"}, {}, "multiple of num_machines"),
        ({"processes": 2, "num_machines": 2}, {}, "main_process_ip is needed"),
        ({"deepspeed": {"zero_stage": 2, "offload_params": True}}, {}, "offload_params needs zero_stage: 3"),
        ({"mixed_precision": "bf16"}, {"precision": "fp32"}, "contradicts training.precision"),
    ],
)
def test_invalid_distributed_sections(distributed, training, message):
    with pytest.raises(DomaintuneError, match=message):
        domaintune.load({"training": training, "distributed": distributed})


def train_losses(run) -> dict[int, float]:
    lines = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tiny_recipe, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # A fixed random order: length grouping sizes its groups by the per-process batch, so it would
    # order the rows differently for 2 x 2 and 1 x 4. Packing stays on, as by default.
    tiny_recipe["training"].update(group_by_length=False, keep_checkpoints=3)
    single = domaintune.train(tiny_recipe)

    tiny_recipe["training"]["batch_size"] = 2
    tiny_recipe["distributed"] = {"processes": 2}
    run = domaintune.train(tiny_recipe)
    assert (run.root / "accelerate_config.yaml").exists()

    # accelerate hands process r the r-th of each 2 consecutive batches of 2 from the same seeded order,
    # so a step sees the single process's 4 rows, and the Trainer averages the loss over the supervised
    # tokens of both processes. Only the float summation order differs (two half batches, then an
    # all-reduce): measured differences are ~1e-6 relative.
    expected = train_losses(single)
    assert sorted(expected) == [2, 4, 6, 8, 10, 12]
    assert train_losses(run) == pytest.approx(expected, rel=1e-4)

    # Rank 0 alone wrote the run files.
    summary = json.loads((run.model / "training.json").read_text())
    assert summary["global_step"] == 12
    assert (run.model / "adapter_model.safetensors").exists()
    assert len(list(run.tensorboard.iterdir())) == 1
    assert len(run.metrics.read_text().splitlines()) == len(single.metrics.read_text().splitlines())

    # --resume relaunches both processes from the last checkpoint and reproduces the same steps.
    for path in (run.checkpoints / "checkpoint-12", run.model):
        shutil.rmtree(path)
    resumed = domaintune.train(tiny_recipe, resume=True)
    assert resumed.root == run.root
    assert json.loads((run.model / "training.json").read_text())["global_step"] == 12
    # Resuming drops what was logged after the checkpoint and logs those steps again: each step once,
    # with the losses of the uninterrupted run.
    steps = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(expected)
    assert train_losses(run) == pytest.approx(expected, rel=1e-4)
