"""Prometheus metrics, in a registry of the app's own (several apps in one process don't collide)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("domaintune_requests", "HTTP requests by endpoint, model and status",
                                ["endpoint", "model", "status"], registry=self.registry)
        self.tokens = Counter("domaintune_tokens", "Tokens by model and kind (prompt, completion, embedding, classification)",
                              ["model", "kind"], registry=self.registry)
        self.latency = Histogram("domaintune_request_latency_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("domaintune_time_to_first_token_seconds", "Time to the first streamed token",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("domaintune_errors", "Error responses by OpenAI error type", ["type"], registry=self.registry)
        self.batch_size = Histogram("domaintune_batch_size", "Rows in each decoding step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
