"""A task head (sequence or token classification, regression) on an encoder or a causal LM's body.

Used with the `classify` objective, which builds the model with its head
(AutoModelForSequenceClassification / AutoModelForTokenClassification) and the label map; this
method decides what trains: the head alone (a linear probe: fast, the body's features as they are),
the head and the whole body, or the head and LoRA on the body (peft's SEQ_CLS / TOKEN_CLS task
types keep the head trainable and save it with the adapter through modules_to_save).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY = "a classification/regression or token (entity) head for the classify objective; head only, + full body, or + LoRA"
TRAINS = "the new head; with train: full also the body, with train: lora low-rank updates on the body"
# Names transformers gives the task head: BERT-style encoders `classifier`, decoder LMs `score`.
HEAD_MODULES = ("classifier", "score")
# The classify objective builds the model with its head; the recipe says so for its method.
OBJECTIVES = ("classify",)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["head"] = "head"
    train: Literal["head", "full", "lora"] = Field(
        "head", description="head: the head only; full: head and body; lora: head and LoRA on the body."
    )
    r: int = Field(8, ge=1, description="LoRA rank (train: lora).")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (train: lora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout (train: lora).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Body modules LoRA adapts (train: lora)."
    )


def head_parameters(model) -> list[str]:
    names = [name for name, _ in model.named_parameters() if name.split(".")[0] in HEAD_MODULES]
    if not names:
        raise ValueError(f"{type(model).__name__} has no task head ({' or '.join(HEAD_MODULES)})")
    return names


def apply(model, config: Config):
    if config.train == "full":
        model.requires_grad_(True)
        return model
    if config.train == "head":
        head = set(head_parameters(model))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in head)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    token_level = type(model).__name__.endswith("ForTokenClassification")
    head = sorted({name.split(".")[0] for name in head_parameters(model)})
    return get_peft_model(model, LoraConfig(
        task_type=TaskType.TOKEN_CLS if token_level else TaskType.SEQ_CLS,
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        # The head is trained whole, not adapted: it is new.
        target_modules=config.target_modules,
        exclude_modules=head,
        modules_to_save=head,
    ))


def meta_model(model_config):
    """What `domaintune methods` sizes this method on: the model with a two-class sequence head."""
    from transformers import AutoModelForSequenceClassification

    model_config.num_labels = 2
    return AutoModelForSequenceClassification.from_config(model_config)
