"""The recipe's `evaluation` and `export` sections: what is measured on the test split and what is written out."""
from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from domaintune.config.base import Section

# The metric names a recipe may list; evaluation/metrics.py implements one function per name.
Metric = Literal["exact_match", "accuracy", "entity_f1", "token_f1", "rouge_l", "macro_f1", "choice_accuracy"]
METRIC_NAMES: tuple[str, ...] = get_args(Metric)


class JudgeConfig(Section):
    model: str | None = Field(None, description="Judge model domaintune can load (built-in name, folder, hub id).")
    endpoint: str | None = Field(
        None, description="Or the base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1 (domaintune serve)."
    )
    endpoint_model: str = Field("default", description="Model name sent to the endpoint.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the endpoint's API key; it is sent only to this "
        "machine (localhost, 127.0.0.1, ::1) or to a host listed in allowed_hosts.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names besides this machine that may receive the API key, e.g. "
        "[api.openai.com]; to any other host the endpoint is called without it.",
    )
    rubric: str = Field(
        "You compare two answers to the same question. The better answer is correct, complete, follows the "
        "format of the reference answer and adds nothing that is not asked for.",
        description="Instructions that open every judge prompt.",
    )
    max_items: int = Field(50, ge=1, description="Test items judged (each twice, answers swapped).")
    max_new_tokens: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _one_judge(self) -> "JudgeConfig":
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("set exactly one of model and endpoint")
        return self


class EvaluationConfig(Section):
    metrics: list[Metric] | Literal["auto"] = Field(
        "auto",
        description="auto: chosen from the prepared data (a closed label set: accuracy and macro_f1; option letters: "
        "choice_accuracy; [NAME - TYPE, ...] answers: entity_f1; short answers: exact_match and token_f1; long "
        "answers: rouge_l and token_f1), and the report says why. Or a list of metric names.",
    )
    baselines: bool = Field(
        True, description="Score the cheapest alternatives on the same test rows: the most frequent train answer, "
        "the base model with k examples, and label scoring by likelihood where the answers form a closed set.",
    )
    answers: Literal["free", "constrained"] = Field(
        "free", description="Which of the tuned model's answers the verdict scores: its free generation, or, where the "
        "answers form a closed set (labels, yes/no, option letters), the allowed answer it finds most likely.",
    )
    shots: int = Field(4, ge=0, description="k of the base model's k-shot baseline (seeded train rows; 0: off).")
    compare_base: bool = Field(True, description="Evaluate the base model on the same test split, side by side.")
    max_samples: int = Field(100, ge=1, description="Test rows used for generation metrics.")
    max_new_tokens: int = Field(128, ge=1)
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=8)] | None = Field(
        None, description="Generated answers end before the first of these strings, and decoding ends there. null: a "
        "line break when no train answer spans lines (a model that goes on past a one-line answer stops there, "
        "as the references do); []: none.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    report_samples: int = Field(12, ge=0, description="Sample outputs shown in the report.")
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Level of the paired bootstrap interval around every base-vs-tuned change."
    )
    bootstrap_resamples: int = Field(2000, ge=100, description="Bootstrap resamples of the test items.")
    forgetting: bool = Field(True, description="Score general-ability probes on both models (the forgetting check).")
    probes: str | None = Field(
        None, description="JSONL of multiple-choice probes (question, choices, answer index, category); null: built-in."
    )
    error_examples: int = Field(10, ge=0, description="Test items where tuned got worse, listed in the report.")
    harness: bool = Field(False, description="Also run the lm-evaluation-harness tasks (`evaluate --harness`).")
    harness_files: list[str] = Field(
        default_factory=list,
        description="Extra evaluation files for the harness: multiple choice (question, choices, answer) or any data format.",
    )
    harness_tasks: list[str] = Field(
        default_factory=list, description="Built-in lm-eval task names (their data comes from the Hugging Face hub)."
    )
    harness_limit: int | None = Field(None, ge=1, description="At most this many items per harness task.")
    judge: JudgeConfig | None = Field(None, description="Pairwise LLM-as-judge of base vs tuned answers; off when null.")


class ExportConfig(Section):
    adapter: bool = Field(True, description="Write the adapter folder (adapter methods only).")
    merged: bool = Field(True, description="Write a merged safetensors folder loadable without peft.")
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    gguf: list[Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k_m"]] = Field(
        default_factory=list,
        description="GGUF files for llama.cpp/Ollama, e.g. [f16, q8_0] (needs the converter `make setup` installs); "
        "q4 types need llama.cpp's llama-quantize and can erase a small model's fine-tuning.",
    )

    ctranslate2: list[Literal["float32", "int8", "int8_float32", "int16", "bfloat16", "int8_bfloat16"]] = Field(
        default_factory=list,
        description="CTranslate2 models converted from the merged model, e.g. [int8] (export/ctranslate2-int8): "
        "what `serve` and evaluation run on, for your own CTranslate2 deployment.",
    )

    @field_validator("gguf", "ctranslate2")
    @classmethod
    def _converted_from_merged(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not info.data.get("merged", True):
            raise ValueError(f"{info.field_name} is converted from the merged model: set export.merged: true")
        return value

