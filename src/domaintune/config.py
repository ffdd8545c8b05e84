"""The recipe: one YAML file, one pydantic schema, validated before anything runs.

Every section forbids unknown keys so a typo fails loudly with its field path
instead of being ignored. Defaults are chosen to work on a 2-core CPU laptop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from domaintune.errors import DomaintuneError
from domaintune.methods import method_config_types
from domaintune.objectives import objective_config_types, objective_names


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", description="Registry name, local Hugging Face folder, or hub id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub repo. Off by default.")


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for the test split.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits when rows have labels.")

    @model_validator(mode="after")
    def _leave_training_rows(self) -> "SplitConfig":
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must leave rows for training (sum < 1)")
        return self


def _off_is_a_word(value: Any) -> Any:
    # YAML reads a bare `off` as false; in these settings the user meant the word.
    return "off" if value is False else value


class DocumentsConfig(Section):
    chunk_tokens: int = Field(
        384, ge=16, description="Documents (PDF, DOCX, HTML, Markdown, text) are cut into chunks of this many tokens."
    )
    overlap: int = Field(48, ge=0, description="Tokens each chunk repeats from the end of the one before.")

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> "DocumentsConfig":
        if self.overlap >= self.chunk_tokens:
            raise ValueError("overlap must be smaller than chunk_tokens")
        return self


class NearDedupConfig(Section):
    enabled: bool = Field(True, description="Remove near-duplicates (MinHash/LSH) after exact dedup.")
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Jaccard similarity of word 3-gram sets at which two rows are near-duplicates."
    )
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more is more precise and slower.")


PiiType = Literal["email", "phone", "credit_card", "iban", "ssn", "ip_address", "url_credentials", "secret"]
PII_TYPES: tuple[str, ...] = PiiType.__args__


class PiiConfig(Section):
    mode: Literal["redact", "drop", "report", "off"] = Field(
        "redact", description="redact: typed placeholders such as [EMAIL]; drop: set the row aside; report: count only."
    )
    types: list[PiiType] = Field(default_factory=lambda: list(PII_TYPES), description="Detectors to run.")
    phone_region: str = Field("US", description="Region for phone numbers written without a +country code.")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return _off_is_a_word(value)

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        import phonenumbers

        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {value!r}; use a two-letter country code such as US, GB or DE")
        return value.upper()


class QualityConfig(Section):
    enabled: bool = Field(True, description="Run the quality filters below (each can be turned off with null).")
    max_repetition: float | None = Field(
        0.5, gt=0.0, le=1.0, description="Set aside rows where this share of word 3-grams repeats an earlier one (20+ words)."
    )
    max_symbol_ratio: float | None = Field(
        0.5, gt=0.0, le=1.0, description="Set aside rows where this share of non-space characters is neither letter nor digit."
    )
    max_boilerplate: float | None = Field(
        0.5, gt=0.0, le=1.0,
        description="Set aside rows where this share of lines is boilerplate (cookie banners, 'all rights reserved', ...).",
    )
    languages: list[str] | None = Field(
        None, description="ISO 639-1 codes to keep, e.g. [en]; rows of 40+ letters detected as another language are set aside."
    )


class ContaminationConfig(Section):
    action: Literal["warn", "fail", "off"] = Field("warn", description="What a contaminated evaluation row does.")
    ngram: int = Field(8, ge=2, description="Word n-gram length compared between train and evaluation rows.")
    threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="An evaluation row is contaminated when this share of its n-grams occurs in train."
    )
    benchmarks: list[str] = Field(default_factory=list, description="Extra evaluation files checked against train (any data format).")

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return _off_is_a_word(value)


AugmentMethod = Literal["word_dropout", "word_swap", "template", "paraphrase"]


class AugmentConfig(Section):
    methods: list[AugmentMethod] = Field(default_factory=list, description="Augmentations of the train split; none by default.")
    max_share: float = Field(0.2, gt=0.0, le=1.0, description="Augmented rows at most this share of the train split.")
    word_dropout: float = Field(0.1, gt=0.0, lt=1.0, description="Chance of dropping each prompt word not in the answer.")
    templates: list[str] = Field(
        default_factory=lambda: ["Please help with this: {prompt}", "{prompt}\n\nAnswer precisely.", "Task:\n{prompt}"],
        min_length=1,
        description="Rewordings of the user turn for `template`; {prompt} is the original.",
    )
    model: str | None = Field(None, description="Paraphrasing model for `paraphrase`; default: model.name.")

    @model_validator(mode="after")
    def _templates_hold_the_prompt(self) -> "AugmentConfig":
        if any("{prompt}" not in template for template in self.templates):
            raise ValueError("every template must contain {prompt}")
        return self


class SynthesizeConfig(Section):
    documents: list[str] = Field(default_factory=list, description="Documents or folders turned into pairs by `data synthesize`.")
    model: str | None = Field(None, description="Generator model; default: model.name.")
    kind: Literal["qa", "instruction"] = Field("qa", description="Question/answer pairs or instruction/response pairs.")
    max_chunks: int | None = Field(None, ge=1, description="Use at most this many chunks (the first ones).")
    max_new_tokens: int = Field(160, ge=8)
    batch_size: int = Field(4, ge=1)
    min_grounding: float = Field(
        0.6, ge=0.0, le=1.0, description="Share of the answer's content words that must occur in its chunk."
    )
    output: str | None = Field(None, description="Output file; default <output_dir>/<name>-synthetic.jsonl.")


DataFormat = Literal["auto", "chat", "sharegpt", "alpaca", "prompt_completion", "text", "labelled", "spans", "pairs", "pairwise", "ranking", "rating"]


class DataConfig(Section):
    train: list[str] = Field(
        default_factory=list,
        description="Data files (JSONL, JSON, CSV, Parquet), documents (PDF, DOCX, HTML, Markdown, text) or folders; globs allowed.",
    )
    validation: list[str] = Field(default_factory=list, description="Optional explicit validation files (else split from train).")
    test: list[str] = Field(default_factory=list, description="Optional explicit test files (else split from train).")
    format: DataFormat = Field("auto", description="Row format; 'auto' detects it per file from the columns.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical column names to yours, e.g. {instruction: question, output: answer}.",
    )
    system_prompt: str | None = Field(None, description="System message added to rows that have none.")
    label_prompt: str = Field(
        "{text}", description="User turn built from a labelled row's text; the label is the answer."
    )
    max_tokens: int = Field(1024, gt=0, description="Rows longer than this (in tokens, after templating) are set aside.")
    min_chars: int = Field(1, ge=0, description="Rows whose answer/text is shorter than this are set aside.")
    dedup: bool = Field(True, description="Remove exact duplicate rows (after normalisation).")
    split: SplitConfig = Field(default_factory=SplitConfig)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)


class EarlyStoppingConfig(Section):
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0.0, description="Smallest validation-loss drop that counts as improvement.")


Precision = Literal["auto", "fp32", "bf16"]


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
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune embedding noise (e.g. 5); off when null.")

    @model_validator(mode="after")
    def _checkpoints_align_with_validation(self) -> "TrainingConfig":
        # Early stopping restores the best checkpoint, so checkpoints must fall on validation steps.
        if self.early_stopping is not None and self.save_every % self.eval_every:
            raise ValueError("save_every must be a multiple of eval_every when early_stopping is on")
        return self


Metric = Literal["exact_match", "accuracy", "entity_f1", "token_f1", "rouge_l"]


class JudgeConfig(Section):
    model: str | None = Field(None, description="Judge model domaintune can load (built-in name, folder, hub id).")
    endpoint: str | None = Field(
        None, description="Or the base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1 (domaintune serve)."
    )
    endpoint_model: str = Field("default", description="Model name sent to the endpoint.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's API key.")
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
    metrics: list[Metric] = Field(default_factory=lambda: ["exact_match", "token_f1"])
    compare_base: bool = Field(True, description="Evaluate the base model on the same test split, side by side.")
    max_samples: int = Field(100, ge=1, description="Test rows used for generation metrics.")
    max_new_tokens: int = Field(128, ge=1)
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


ObjectiveConfig = Annotated[Union[objective_config_types()], Field(discriminator="name")]


class ExportConfig(Section):
    adapter: bool = Field(True, description="Write the adapter folder (adapter methods only).")
    merged: bool = Field(True, description="Write a merged safetensors folder loadable without peft.")
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    gguf: list[Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k_m"]] = Field(
        default_factory=list,
        description="GGUF files for llama.cpp/Ollama, e.g. [f16, q8_0] (needs the converter `make setup` installs); "
        "q4 types need llama.cpp's llama-quantize and can erase a small model's fine-tuning.",
    )

    @field_validator("gguf")
    @classmethod
    def _gguf_needs_merged(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if value and not info.data.get("merged", True):
            raise ValueError("GGUF is converted from the merged model: set export.merged: true")
        return value


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


MethodConfig = Annotated[Union[method_config_types()], Field(discriminator="name")]


class _RangeParam(Section):
    @model_validator(mode="after")
    def _low_below_high(self) -> "_RangeParam":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (learning rates).")

    @model_validator(mode="after")
    def _positive_for_log(self) -> "FloatParam":
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class IntParam(_RangeParam):
    type: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)


class CategoricalParam(Section):
    type: Literal["categorical"] = "categorical"
    choices: list[bool | int | float | str | None] = Field(min_length=1)


SEARCH_PARAM_TYPES = (FloatParam, IntParam, CategoricalParam)
SearchParam = Annotated[Union[SEARCH_PARAM_TYPES], Field(discriminator="type")]


class TuneConfig(Section):
    trials: int = Field(8, ge=1, description="Trials per `domaintune tune` call; a re-run adds this many more.")
    storage: str | None = Field(
        None, description="Optuna storage URL; default sqlite:///<output_dir>/<name>-tune.db, so a study resumes."
    )
    study_name: str | None = Field(None, description="Study name in the storage; default: the recipe name.")
    seed: int | None = Field(None, description="Sampler seed; default: the recipe seed.")
    pruner: Literal["median", "none"] = Field(
        "median", description="'median' stops a trial whose validation loss is above the median of earlier trials."
    )
    space: dict[str, SearchParam] = Field(
        default_factory=dict,
        description="Dotted recipe key -> distribution. Empty: training.lr (log scale around the recipe's lr) "
        "and, for LoRA, method.r in {8, 16, 32}.",
    )


class CompareVariant(Section):
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Name in the table and run names; default: the method name.")
    method: MethodConfig
    lr: float | None = Field(None, gt=0, description="training.lr for this variant (e.g. higher for ia3, prefix, prompt).")


class CompareConfig(Section):
    variants: list[CompareVariant] = Field(min_length=2, description="The methods `domaintune compare` trains on the same data.")


class StageConfig(Section):
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="Stage name in run names; default stageN.")
    data: dict[str, Any] = Field(default_factory=dict, description="Keys of the data section that differ in this stage.")
    objective: dict[str, Any] | None = Field(None, description="This stage's objective block (replaces the recipe's).")
    method: dict[str, Any] | None = Field(None, description="This stage's method block (replaces the recipe's).")
    training: dict[str, Any] = Field(default_factory=dict, description="Keys of the training section that differ.")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="Keys of the evaluation section that differ.")


class Recipe(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name; runs go to <output_dir>/<name>-<time>.")
    output_dir: str = Field("runs", description="Folder that holds run directories.")
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=lambda: method_config_types()[0]())
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    objective: ObjectiveConfig = Field(
        default_factory=lambda: objective_config_types()[0](), description="What is learned (`domaintune methods` lists the objectives)."
    )
    tune: TuneConfig | None = Field(None, description="Hyper-parameter search (`domaintune tune`).")
    compare: CompareConfig | None = Field(None, description="Methods compared by `domaintune compare`.")
    stages: list[StageConfig] | None = Field(
        None, min_length=2, description="A curriculum: `domaintune run` trains these in order, each from the previous one's weights."
    )
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _stages_are_recipes(self) -> "Recipe":
        if self.stages:
            from domaintune.objectives.stages import stage_recipes

            stage_recipes(self)  # each stage, merged into this recipe, must be a valid recipe itself
        return self

    @model_validator(mode="after")
    def _method_fits_objective(self) -> "Recipe":
        # A task head exists only for classify; classify and the embedding objectives train their own way.
        from domaintune.methods import get_method
        from domaintune.objectives import get_objective

        objectives = getattr(get_method(self.method.name), "OBJECTIVES", None)
        if objectives and self.objective.name not in objectives:
            raise ValueError(f"method {self.method.name} works with objective {' or '.join(objectives)} only")
        methods = getattr(get_objective(self.objective.name), "METHODS", None)
        if methods and self.method.name not in methods:
            raise ValueError(f"objective {self.objective.name} trains with method {' or '.join(methods)} "
                             f"(set method.name), not {self.method.name}")
        return self

    @model_validator(mode="after")
    def _one_precision(self) -> "Recipe":
        # The launched processes and the Trainer inside them must agree; an explicit contradiction is a mistake.
        wanted = {"no": "fp32", "bf16": "bf16"}.get(self.distributed.mixed_precision)
        if wanted and self.training.precision not in ("auto", wanted):
            raise ValueError(
                f"distributed.mixed_precision {self.distributed.mixed_precision!r} contradicts "
                f"training.precision {self.training.precision!r}"
            )
        return self


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: `training.lr: input should be a number`."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if not _is_union_tag(part))
        message = item["msg"]
        message = message[0].lower() + message[1:] if message else message
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path or '<recipe>'}: {message}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the discriminator value (e.g. 'lora', 'float') into the location of union members.
    tags = {cls.model_fields["name"].default for cls in method_config_types()}
    tags |= {name for cls in objective_config_types() for name in objective_names(cls)}
    tags |= {cls.model_fields["type"].default for cls in SEARCH_PARAM_TYPES}
    return isinstance(part, str) and part in tags


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML so `2`, `true`, `[a, b]` get their types."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise DomaintuneError(f"--set {override!r}: expected KEY=VALUE, e.g. training.epochs=2")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DomaintuneError(f"--set {override!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def validate_recipe(data: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise DomaintuneError(f"{source} is not a valid recipe:\n{format_validation_error(error)}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply CLI overrides, validate. Relative data paths resolve against the recipe's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DomaintuneError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError:
        raise DomaintuneError(f"{path}: recipe is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DomaintuneError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise DomaintuneError(f"{path}: a recipe is a mapping of sections (model, data, method, ...)")
    data = apply_overrides(data, overrides or [])
    recipe = validate_recipe(data, source=str(path))
    return resolve_data_paths(recipe, path.parent)


def resolve_data_paths(recipe: Recipe, base: Path) -> Recipe:
    def resolve(files: list[str]) -> list[str]:
        return [f if Path(f).is_absolute() else str((base / f).resolve()) for f in files]

    recipe.data.train = resolve(recipe.data.train)
    recipe.data.validation = resolve(recipe.data.validation)
    recipe.data.test = resolve(recipe.data.test)
    for stage in recipe.stages or []:
        for part in ("train", "validation", "test"):
            if isinstance(stage.data.get(part), list):
                stage.data[part] = resolve(stage.data[part])
    recipe.data.contamination.benchmarks = resolve(recipe.data.contamination.benchmarks)
    recipe.data.synthesize.documents = resolve(recipe.data.synthesize.documents)
    if recipe.evaluation.probes:
        recipe.evaluation.probes = resolve([recipe.evaluation.probes])[0]
    recipe.evaluation.harness_files = resolve(recipe.evaluation.harness_files)
    from domaintune.objectives import hook

    own = hook(recipe.objective, "resolve_paths")  # multitask: each task's files
    if own:
        own(recipe.objective, resolve)
    return recipe


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()
