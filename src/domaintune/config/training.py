"""The recipe's `training` and `distributed` sections: the loop's settings and the multi-process launch."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from domaintune.config.base import Section


class EarlyStoppingConfig(Section):
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest validation-loss drop that counts as improvement.")


Precision = Literal["auto", "fp32", "bf16"]
Tracker = Literal["tensorboard", "mlflow", "trackio"]


class TrainingConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: run all epochs).")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1, description="Validate every N steps.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N steps; a multiple of eval_every.")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last K checkpoints.")
    log_every: int = Field(5, ge=1)
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    precision: Precision = Field("auto", description="'auto' uses bf16 autocast where the CPU/GPU supports it.")
    threads: int | Literal["auto"] = Field("auto", description="CPU threads for torch; 'auto' uses the free cores.")
    group_by_length: bool = Field(True, description="Batch rows of similar length (only matters without packing).")
    packing: bool = Field(True, description="Pack each batch into padding-free rows (exact, faster).")
    pack_tokens: int = Field(
        512, ge=16, description="Longest packed row; CPU attention cost grows with the square of a row's length."
    )
    supervised_logits_only: bool = Field(
        True, description="With packing, compute the LM head only where the next token is supervised."
    )
    compile: bool = Field(False, description="torch.compile the model: ~20% faster steps after minutes of compiling.")
    fused_lora: bool = Field(
        True, description="Train plain LoRA layers through one fused autograd function when training in fp32 (CPUs "
        "without bf16): peft's numbers, fewer passes over memory. Off under bf16, DoRA, QLoRA or compile.",
    )
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune embedding noise (e.g. 5); off when null.")
    report_to: list[Tracker] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Where training curves also go: tensorboard (RUN/tensorboard), mlflow (a local store in "
        "RUN/mlruns unless MLFLOW_TRACKING_URI is set; needs `pip install domaintune[mlflow]`), trackio (local, "
        "project = the recipe's name; needs `pip install domaintune[trackio]`); [] or none for none of them.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        if value is None or value == "none":
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _checkpoints_align_with_validation(self) -> "TrainingConfig":
        # Early stopping restores the best checkpoint, so checkpoints must fall on validation steps.
        if self.early_stopping is not None and self.save_every % self.eval_every:
            raise ValueError("save_every must be a multiple of eval_every when early_stopping is on")
        return self


class FsdpConfig(Section):
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"] = Field(
        "FULL_SHARD",
        description="Shard parameters, gradients and optimiser state (FULL_SHARD), only gradients and optimiser "
        "state (SHARD_GRAD_OP), or nothing (NO_SHARD, like ddp).",
    )
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP"] = Field(
        "TRANSFORMER_BASED_WRAP", description="Shard per transformer layer, or per module above a parameter count."
    )
    offload_params: bool = Field(False, description="Keep parameters and gradients in CPU memory between uses.")
    cpu_ram_efficient_loading: bool = Field(
        True, description="Only rank 0 reads the weights into CPU memory; the other ranks receive them."
    )


class DeepSpeedConfig(Section):
    zero_stage: Literal[2, 3] = Field(2, description="ZeRO 2 shards gradients and optimiser state; 3 also parameters.")
    offload_optimizer: bool = Field(False, description="Keep the optimiser state in CPU memory.")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (zero_stage 3 only).")

    @model_validator(mode="after")
    def _param_offload_needs_zero3(self) -> "DeepSpeedConfig":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3 (ZeRO 2 does not shard parameters)")
        return self


class DistributedConfig(Section):
    backend: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per process (GPUs or CPU processes); fsdp/deepspeed: sharded, GPUs only."
    )
    processes: int = Field(1, ge=1, description="Processes over all machines, one per GPU; 1 trains in this process.")
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0, description="This machine's rank; 0 is the machine at main_process_ip.")
    main_process_ip: str | None = Field(None, description="Address of the rank-0 machine (needed for num_machines > 1).")
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Its port; default: a free port on one machine, 29500 across machines."
    )
    mixed_precision: Literal["no", "bf16"] | None = Field(None, description="null: follow training.precision.")
    fsdp: FsdpConfig = Field(default_factory=FsdpConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)

    @model_validator(mode="after")
    def _consistent_layout(self) -> "DistributedConfig":
        if self.processes % self.num_machines:
            raise ValueError("processes must be a multiple of num_machines (each machine runs the same number)")
        if self.machine_rank >= self.num_machines:
            raise ValueError("machine_rank must be below num_machines")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("main_process_ip is needed when num_machines > 1")
        return self

