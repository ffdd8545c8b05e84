"""The recipe's `data` section: which files, their format, and every preparation stage's settings."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from domaintune.config.base import Section, off_is_a_word


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation.")
    test: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for the test split.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits when rows have labels.")

    @model_validator(mode="after")
    def _leave_training_rows(self) -> "SplitConfig":
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must leave rows for training (sum < 1)")
        return self


class DocumentsConfig(Section):
    chunk_tokens: int = Field(
        384, ge=16, description="Documents (PDF, DOCX, HTML, Markdown, text) are cut into chunks of this many tokens."
    )
    overlap: int = Field(48, ge=0, description="Tokens each chunk repeats from the end of the one before.")
    max_member_mb: float = Field(
        50, gt=0, description="A DOCX whose parts unpack to more than this (a zip bomb), or a PDF whose text passes it (a PDF bomb), "
        "is skipped, with the reason."
    )

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
        return off_is_a_word(value)

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
        return off_is_a_word(value)


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
    balance_labels: bool = Field(
        False, description="With a closed set of answers, repeat the rarer answers' training rows (each answer's "
        "count raised to the geometric mean of its own and the most frequent one's), so a skewed task does not "
        "collapse to its majority answer. The prepared splits and evaluation are unchanged.",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    documents: DocumentsConfig = Field(default_factory=DocumentsConfig)
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)

