"""The `inference` section: which engine makes the models write text (evaluation, judge, select,
synthesis, the feedback page, serve) and at what precision."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from domaintune.config.base import Section

Engine = Literal["auto", "torch", "ctranslate2"]
ComputeType = Literal["auto", "float32", "int8", "int8_float32", "int16", "bfloat16", "int8_bfloat16", "float16"]


class InferenceConfig(Section):
    engine: Engine = Field(
        "auto",
        description="auto: CTranslate2 where it is installed and can load the model (3-5x faster on a CPU), "
                    "else torch. torch: transformers' generate, exact, and the only engine for prefix/prompt-tuned "
                    "adapters.",
    )
    compute_type: ComputeType = Field(
        "auto",
        description="CTranslate2 precision. auto: float32 for evaluation (a verdict must not move with the "
                    "engine); for serving and synthesis float32 too, except int8 where the CPU has VNNI or "
                    "AVX-512 and CTranslate2 runs on Intel MKL (CT2_USE_MKL=1; oneDNN, the default, ran int8 slower).",
    )
