"""Multi-process training: the recipe's `distributed` section -> an accelerate config -> `accelerate launch`.

The launching process has already prepared the run directory; each launched process runs
`domaintune train RUN_DIR`, which trains in place because it sees it was launched. accelerate
(through torchrun or the DeepSpeed launcher) starts and watches the processes; nothing here
manages processes by hand.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import yaml

from domaintune.config import Recipe
from domaintune.config.runtime import use_bf16
from domaintune.core.errors import DomaintuneError
from domaintune.storage.rundir import RunDir


def launched_worker() -> bool:
    """True in a process started by a launcher, which must train rather than launch again.

    `accelerate launch` exports ACCELERATE_* settings to every process it starts (also with
    mpirun); torchrun and the DeepSpeed launcher export LOCAL_RANK.
    """
    return "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ


def accelerate_config(recipe: Recipe, gpus: int) -> dict:
    """The `accelerate launch --config_file` settings for the recipe on a machine with `gpus` GPUs."""
    dist = recipe.distributed
    per_machine = dist.processes // dist.num_machines
    if gpus == 0 and dist.backend != "ddp":
        # Checked here rather than failing in every process: accelerate's FSDP plugin stops with "no available
        # devices found" on a CPU machine, and it starts DeepSpeed only for GPU runs.
        raise DomaintuneError(
            f"distributed.backend: {dist.backend} needs GPUs and this machine has none; "
            "use backend: ddp to train with several CPU processes"
        )
    if gpus and per_machine > gpus:
        raise DomaintuneError(
            f"distributed.processes: {per_machine} processes per machine but {gpus} GPU(s); run one process per GPU"
        )
    config = {
        "compute_environment": "LOCAL_MACHINE",
        # accelerate starts MULTI_CPU processes only through mpirun; its torchrun launcher (MULTI_GPU) starts
        # them itself, and with use_cpu the Trainer joins them as MULTI_CPU over gloo.
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[dist.backend],
        "num_processes": dist.processes,
        "num_machines": dist.num_machines,
        "machine_rank": dist.machine_rank,
        # 0 lets accelerate pick a free port, so runs side by side on one machine don't collide.
        "main_process_port": dist.main_process_port or (0 if dist.num_machines == 1 else 29500),
        "mixed_precision": "bf16" if use_bf16(recipe) else "no",
        "use_cpu": gpus == 0,
    }
    if dist.num_machines > 1:
        # Static rendezvous at main_process_ip:port, with each machine's rank fixed by machine_rank.
        config.update(main_process_ip=dist.main_process_ip, rdzv_backend="static", same_network=True)
    if dist.backend == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 1,  # the version whose sharding strategies the recipe names
            "fsdp_sharding_strategy": dist.fsdp.sharding_strategy,
            "fsdp_auto_wrap_policy": dist.fsdp.auto_wrap_policy,
            "fsdp_offload_params": dist.fsdp.offload_params,
            "fsdp_cpu_ram_efficient_loading": dist.fsdp.cpu_ram_efficient_loading,
            "fsdp_sync_module_states": True,  # rank 0's weights reach every rank (needed by efficient loading)
            "fsdp_use_orig_params": True,  # LoRA mixes frozen and trainable parameters in one wrapped unit
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # model/ stays a plain Hugging Face folder
        }
    if dist.backend == "deepspeed":
        config["deepspeed_config"] = {
            "zero_stage": dist.deepspeed.zero_stage,
            "offload_optimizer_device": "cpu" if dist.deepspeed.offload_optimizer else "none",
            "offload_param_device": "cpu" if dist.deepspeed.offload_params else "none",
            # ZeRO 3 shards the weights; gather them on save so model/ holds the whole model.
            "zero3_save_16bit_model": dist.deepspeed.zero_stage == 3,
        }
    return config


def launch(run: RunDir, recipe: Recipe, resume: bool = False) -> None:
    """Train the prepared run in recipe.distributed.processes processes started by `accelerate launch`, with
    the config written to RUN_DIR/accelerate_config.yaml (accelerate_config-machine<K>.yaml on machine K)."""
    import torch

    dist = recipe.distributed
    config = accelerate_config(recipe, gpus=torch.cuda.device_count())
    if dist.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise DomaintuneError("distributed.backend: deepspeed is not installed (`pip install deepspeed`)")
    # The machines of a multi-node run share the run directory, so each writes a file of its own.
    suffix = f"-machine{dist.machine_rank}" if dist.num_machines > 1 else ""
    config_file = run.root / f"accelerate_config{suffix}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    command += ["-m", "domaintune.cli", "train", str(run.root), *(["--resume"] if resume else [])]
    exit_code = subprocess.run(command).returncode
    if exit_code != 0:
        raise DomaintuneError(
            f"distributed training failed: `accelerate launch` exited with code {exit_code} "
            "(the processes' own errors are above)"
        )
