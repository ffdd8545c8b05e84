"""Accounting for each request: its record, and at its end the metrics, the key's token spend and the audit line."""
from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from domaintune.serving.auth import ApiKey, Spend

if TYPE_CHECKING:
    from domaintune.serving.state import State

audit_log = logging.getLogger("domaintune.audit")


class Record:
    """One request's audit line and metrics, finished when its response (or its stream) ends."""

    def __init__(self, endpoint: str):
        self.start = time.perf_counter()
        self.endpoint = endpoint
        self.key: ApiKey | None = None
        self.model: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.deferred = False  # a stream finishes the record itself
        self.reservation: Spend | None = None  # tokens held against the key's budget until the end
        self.content: dict[str, str] = {}


def finish(state: State, record: Record, status: int) -> None:
    latency = time.perf_counter() - record.start
    metrics = state.metrics
    metrics.requests.labels(record.endpoint, record.model or "", str(status)).inc()
    metrics.latency.labels(record.endpoint).observe(latency)
    if record.model:
        metrics.tokens.labels(record.model, "prompt").inc(record.prompt_tokens)
        metrics.tokens.labels(record.model, "completion").inc(record.completion_tokens)
    if record.reservation is not None:
        state.keys.settle(record.reservation, record.prompt_tokens + record.completion_tokens)
    elif record.key is not None:
        state.keys.spend(record.key, record.prompt_tokens + record.completion_tokens)
    line = {"time": round(time.time(), 3), "key_id": record.key.id if record.key else None, "endpoint": record.endpoint, "model": record.model,
            "status": status, "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
            "latency_ms": round(latency * 1000, 1)}
    if state.settings.log_content:
        line.update(record.content)
    audit_log.info(json.dumps(line))
