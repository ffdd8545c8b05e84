"""The server's settings, shared by the built-in server and the vLLM hand-over."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from domaintune.config.inference import ComputeType
from domaintune.core.errors import DomaintuneError
from domaintune.core.net import is_loopback


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    keys_file: str | None = None
    cors_origins: list[str] = field(default_factory=list)  # none: browsers on other origins are refused
    max_body_bytes: int = 1 << 20
    max_tokens: int = 1024  # cap on a request's max_tokens
    max_context: int | None = None  # cap on prompt + max_tokens (default: the model's context)
    max_inputs: int = 256  # texts per embeddings or classify request
    max_prompts: int = 16  # prompts per /v1/completions request
    max_pending: int = 256  # generation requests waiting for a batch; more get 503
    max_concurrent: int = 1024  # requests in progress; more get 503
    log_content: bool = False  # put prompts and completions in the audit log
    redact_pii: bool = False  # replace PII in outputs with typed placeholders
    engine: str = "auto"  # auto: OpenVINO, else CTranslate2 alone and torch under concurrency, else torch (engine_choice.py)
    compute_type: str = "auto"  # OpenVINO's or CTranslate2's; auto: int8 on OpenVINO with VNNI/AVX-512, else float16
    dtype: str = "auto"  # torch's; auto: bf16 where the CPU has it, else fp32
    threads: int | str = "auto"  # torch threads; auto: the cores other work leaves free
    max_loaded_adapters: int = 4
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    trust_remote_code: bool = False

    def __post_init__(self):
        for name in ("max_body_bytes", "max_tokens", "max_inputs", "max_prompts", "max_pending", "max_concurrent",
                     "max_loaded_adapters", "max_batch_size"):
            if getattr(self, name) < 1:
                raise DomaintuneError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if self.threads != "auto" and not (isinstance(self.threads, int) and self.threads >= 1):
            raise DomaintuneError(f"--threads: a positive whole number or auto, got {self.threads!r}")
        if self.engine not in ("auto", "openvino", "torch", "ctranslate2"):
            raise DomaintuneError(f"--engine: one of auto, openvino, torch, ctranslate2, vllm; got {self.engine!r}")
        if self.compute_type not in get_args(ComputeType):
            raise DomaintuneError(f"--compute-type: one of {', '.join(get_args(ComputeType))}; got {self.compute_type!r}")
        if self.dtype not in ("auto", "bfloat16", "float32"):
            raise DomaintuneError(f"--dtype: one of auto, bfloat16, float32 (fp16 is slow on CPUs), got {self.dtype!r}")


def require_keys_off_loopback(host: str, has_keys: bool) -> None:
    """Anyone who can reach a non-loopback address could use the models: keys are mandatory there."""
    if not is_loopback(host) and not has_keys:
        raise DomaintuneError(
            f"--host: refusing to listen on {host} without API keys; set DOMAINTUNE_API_KEYS or pass --keys-file "
            "(or keep the default 127.0.0.1)"
        )
