"""The recipe's `objective` section: every objective's Config side by side, told apart by `name`,
with the facts about an objective that the recipe's own checks need (the methods it trains with,
whether it trains a policy). The objectives themselves (objectives/) bring the training and
evaluation; like TRL's `*_config.py`, nothing here knows them.

Each Config's `name` is a Literal of the names it answers to (sft answers to `auto` too). Class
variables, not fields: `methods` (the only methods the objective trains with), `trains_policy`
(False for a reward model: a curriculum passes on the model the stage started from).
"""
from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from domaintune.config.evaluation import METRIC_NAMES


class ObjectiveSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methods: ClassVar[tuple[str, ...] | None] = None
    trains_policy: ClassVar[bool] = True


class SftConfig(ObjectiveSection):
    name: Literal["auto", "sft"] = Field(
        "auto",
        description="auto/sft: conversations train on the answers, raw text rows as causal LM per document.",
    )


class PretrainConfig(ObjectiveSection):
    name: Literal["pretrain"] = "pretrain"
    block_size: int = Field(512, ge=16, description="Tokens per training block.")


class InstructConfig(ObjectiveSection):
    name: Literal["instruct"] = "instruct"
    task: str = Field(description="The task description that opens every instruction, e.g. 'Classify the review.'")

    @field_validator("task")
    @classmethod
    def _not_blank(cls, task: str) -> str:
        if not task.strip():
            raise ValueError("objective instruct needs a task description")
        return task


class ClassifyConfig(ObjectiveSection):
    methods: ClassVar[tuple[str, ...]] = ("head",)

    name: Literal["classify"] = "classify"
    task: Literal["sequence", "regression", "token"] = Field(
        "sequence", description="sequence: a label per text; regression: a number per text; token: entity tags."
    )
    labels: list[str] | None = Field(
        None, description="Label names (token: entity types) in a fixed order; default: those in the train split."
    )


class ContrastiveConfig(ObjectiveSection):
    methods: ClassVar[tuple[str, ...]] = ("full",)

    name: Literal["contrastive"] = "contrastive"
    pairs_from: Literal["auto", "pairs", "labels"] = Field(
        "auto", description="pairs: each row's anchor (question) and positive (answer); labels: rows sharing a "
        "label; auto: labels when rows have them."
    )


class FewshotConfig(ObjectiveSection):
    name: Literal["fewshot"] = "fewshot"
    shots: int = Field(8, ge=1, description="Training examples per label, sampled from the train split.")
    mode: Literal["auto", "setfit", "sft"] = Field("auto", description="auto: setfit for an encoder, sft for a causal LM.")
    prompt_model: str | None = Field(
        None, description="Causal LM answering the k-shot prompts; default: the base model, or smollm2 for an encoder."
    )
    max_steps: int = Field(40, ge=1, description="sft: at most this many optimiser steps.")
    weight_decay: float = Field(0.1, ge=0.0, description="sft: at least this weight decay.")
    eval_every: int = Field(5, ge=1, description="sft: validate (and early-stop) every N steps.")
    iterations: int = Field(20, ge=1, description="setfit: contrastive pairs drawn per example.")
    seed: int = Field(42, description="Seed of the shots' sampling.")


class Task(BaseModel):  # one task of a multitask objective
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train: list[str] = Field(min_length=1, description="This task's data files (any data format).")
    validation: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    weight: float = Field(1.0, gt=0, description="Copies of each train row in the mix (fractions sample).")
    tag: str | None = Field(None, description="Text opening every request of this task, e.g. '[NER]'.")
    metrics: list[str] | None = Field(None, description="This task's metrics; default: evaluation.metrics.")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        unknown = [name for name in metrics or [] if name not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}")
        return metrics


class MultitaskConfig(ObjectiveSection):
    name: Literal["multitask"] = "multitask"
    tasks: list[Task] = Field(min_length=2)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[Task]) -> list[Task]:
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        return tasks

    def resolve_paths(self, resolve) -> None:
        """Make each task's files absolute with `resolve(field, files)` (against the recipe's folder)."""
        for number, task in enumerate(self.tasks):
            for part in ("train", "validation", "test"):
                setattr(task, part, resolve(f"objective.tasks.{number}.{part}", getattr(task, part)))


class RewardSpec(BaseModel):  # one reward source of `rewards:` (ppo, grpo; evaluating preference-tuned models)
    model_config = ConfigDict(extra="forbid")

    regex: str | None = Field(None, description="1.0 when the answer matches this regular expression (re.search), else 0.0.")
    function: str | None = Field(None, description="'module:function' or 'file.py:function' returning one float per answer.")
    model: str | None = Field(None, description="A reward model folder, a `reward` run directory, or stage:LABEL.")
    weight: float = Field(1.0, description="Weight of this source in the summed reward.")

    @model_validator(mode="after")
    def _one_source(self) -> "RewardSpec":
        if sum(value is not None for value in (self.regex, self.function, self.model)) != 1:
            raise ValueError("give exactly one of regex, function and model")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @field_validator("function")
    @classmethod
    def _module_and_name(cls, value: str | None) -> str | None:
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError("expected 'module:function' or 'file.py:function'")
        return value

    def label(self) -> str:
        return f"regex {self.regex}" if self.regex else f"function {self.function}" if self.function else f"model {self.model}"


class DpoConfig(ObjectiveSection):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model (KL weight).")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description="DPO's loss; ipo is less prone to overfitting.")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Optional: score base vs tuned answers in evaluation.")


class KtoConfig(ObjectiveSection):
    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model.")
    threshold: float = Field(3.0, description="A rated answer is desirable when its score is at least this.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of desirable answers (raise it when they are rarer).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable answers.")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Optional: score base vs tuned answers in evaluation.")


class OrpoConfig(ObjectiveSection):
    name: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term against the SFT loss (the paper's lambda).")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Optional: score base vs tuned answers in evaluation.")


class RewardConfig(ObjectiveSection):
    trains_policy: ClassVar[bool] = False
    # A scorer is saved merged, as a plain sequence classifier: methods peft can't put on one (prefix, prompt, ia3,
    # loha, lokr) or whose weights the merge would drop (adapters) can't make one.
    methods: ClassVar[tuple[str, ...]] = ("lora", "full", "freeze")

    name: Literal["reward"] = "reward"
    center_rewards: float | None = Field(
        0.01, ge=0, description="Weight of a penalty on the mean score, keeping rewards centred near 0 (null: off)."
    )


class SamplingConfig(ObjectiveSection):
    """What the online objectives (ppo, grpo) share: the rewards and how answers are sampled."""

    rewards: list[RewardSpec] = Field(
        min_length=1, description="Reward sources, summed with their weights (a reward model: {model: RUN_DIR or stage:LABEL})."
    )
    max_new_tokens: int = Field(48, ge=1, description="Longest sampled answer.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the answers.")


class GrpoConfig(SamplingConfig):
    name: Literal["grpo"] = "grpo"
    num_generations: int = Field(
        4, ge=2, description="Answers sampled per prompt (the group). training.batch_size counts answers, so a step "
        "holds batch_size / num_generations prompts; it must divide batch_size."
    )
    beta: float = Field(0.04, ge=0, description="KL weight towards the reference model (0: no reference, less memory).")


class PpoConfig(SamplingConfig):
    name: Literal["ppo"] = "ppo"
    kl_coef: float = Field(0.05, ge=0, description="Per-token KL penalty towards the reference model.")
    ppo_epochs: int = Field(4, ge=1, description="Optimisation passes over each batch of rollouts.")
    mini_batches: int = Field(1, ge=1, description="Pieces each batch is split into per pass.")
    clip_range: float = Field(0.2, gt=0, description="Clipping of the policy ratio.")
    value_clip: float = Field(0.2, gt=0, description="Clipping of the value change per update.")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount over answer tokens.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")


# The first is the recipe's default objective.
OBJECTIVE_CONFIGS: tuple[type[ObjectiveSection], ...] = (
    SftConfig, PretrainConfig, InstructConfig, ClassifyConfig, ContrastiveConfig, FewshotConfig, MultitaskConfig,
    DpoConfig, KtoConfig, OrpoConfig, RewardConfig, GrpoConfig, PpoConfig,
)
ObjectiveConfig = Annotated[Union[OBJECTIVE_CONFIGS], Field(discriminator="name")]


def objective_names(config_type: type) -> tuple[str, ...]:
    """The names a Config answers to."""
    return get_args(config_type.model_fields["name"].annotation)


def objective_config(name: str) -> type[ObjectiveSection]:
    return next(config for config in OBJECTIVE_CONFIGS if name in objective_names(config))
