"""The abuse phase of `serve_load.py --abuse-paths N`: each hostile request of issue 13 once, then N requests
to random paths, while a probe times /health; the server's RSS before and after.

A check passes when the server answers as it must (the status, and OpenAI's error shape for an error).
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx  # the HTTP client the openai package is built on
import psutil
from serving_bench import percentiles

ERROR_FIELDS = {"message", "type", "param", "code"}


class Tally:
    """5xx answers and connection errors, from every thread of the phase."""

    def __init__(self):
        self.lock = threading.Lock()
        self.server_errors = 0
        self.connection_errors = 0

    def request(self, client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response | None:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError:
            with self.lock:
                self.connection_errors += 1
            return None
        if response.status_code >= 500:
            with self.lock:
                self.server_errors += 1
        return response


def _check(response: httpx.Response | None, status: int, param: str | None = None, body: dict | None = None) -> dict:
    if response is None:
        return {"passed": False, "status": "connection-error"}
    result = {"status": response.status_code, "expected": status}
    passed = response.status_code == status
    if status >= 400:
        error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith("application/json") else {}
        passed = passed and set(error) == ERROR_FIELDS and (param is None or error.get("param") == param)
        result["message"] = error.get("message")
    if body is not None:
        passed = passed and response.json() == body
    return {"passed": passed, **result}


def _compact(body: dict) -> bytes:
    # Compact JSON: 250,000 one-letter prompts then fit under the default 1 MiB body limit.
    return json.dumps(body, separators=(",", ":")).encode()


def hostile(client: httpx.Client, tally: Tally, model: str, keys: dict[str, str]) -> dict[str, dict]:
    ops = {"Authorization": f"Bearer {keys['ops']}", "Content-Type": "application/json"}
    tenant = {"Authorization": f"Bearer {keys['tenant']}", "Content-Type": "application/json"}
    checks = {
        "prompt_list_250k": _check(tally.request(client, "POST", "/v1/completions", headers=ops, content=_compact(
            {"model": model, "prompt": ["a"] * 250_000, "max_tokens": 1})), 400, "prompt"),
        "stop_list_85k": _check(tally.request(client, "POST", "/v1/completions", headers=ops, content=_compact(
            {"model": model, "prompt": "hi", "max_tokens": 1, "stop": ["x"] * 85_000})), 400, "stop"),
        "content_part_text_5": _check(tally.request(client, "POST", "/v1/chat/completions", headers=ops, content=_compact(
            {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})),
            400, "messages.0.content.0.text"),
        "health_without_key": _check(tally.request(client, "GET", "/health"), 200, body={"status": "ok"}),
        "metrics_without_admin": _check(tally.request(client, "GET", "/metrics", headers=tenant), 403),
    }
    # Concurrent requests against a token budget: only as many as their reservations fit get through.
    burst = {"model": model, "prompt": "Hello", "max_tokens": 100}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: tally.request(client, "POST", "/v1/completions", headers=tenant,
                                                        content=_compact(burst)), range(8)))
    statuses = Counter(reply.status_code if reply is not None else "connection-error" for reply in replies)
    checks["token_budget_burst"] = {"passed": set(statuses) <= {200, 429} and 1 <= statuses[200] <= 2,
                                    "status_counts": {str(status): count for status, count in statuses.items()}}
    # A stream dropped after its first chunk: the server carries on.
    try:
        with client.stream("POST", "/v1/completions", headers=ops, content=_compact(
                {"model": model, "prompt": "Tell me a long story", "max_tokens": 200, "stream": True})) as stream:
            next(stream.iter_lines())
        checks["dropped_stream"] = _check(tally.request(client, "GET", "/health"), 200)
    except httpx.TransportError:
        tally.connection_errors += 1
        checks["dropped_stream"] = {"passed": False, "status": "connection-error"}
    return checks


def abuse(url: str, model: str, keys: dict[str, str], paths: int, pid: int) -> dict:
    server = psutil.Process(pid)
    rss_before = server.memory_info().rss
    tally = Tally()
    probe_times: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30) as probe_client:
            while not stop.is_set():
                start = time.perf_counter()
                if tally.request(probe_client, "GET", "/health") is not None:
                    probe_times.append(time.perf_counter() - start)
                stop.wait(0.02)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=16)) as client:
            checks = hostile(client, tally, model, keys)
            with ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(lambda _: tally.request(client, "GET", f"/{uuid.uuid4().hex}"), range(paths)))
    finally:
        stop.set()
        prober.join(timeout=30)
    rss_after = server.memory_info().rss
    return {
        "hostile": checks,
        "random_paths": {"requests": paths, "status_counts": dict(Counter(
            str(reply.status_code) if reply is not None else "connection-error" for reply in replies))},
        "health_probes": len(probe_times),
        "health_ms": {name: round(value * 1000, 1) for name, value in percentiles(probe_times).items()},
        "server_errors": tally.server_errors,
        "connection_errors": tally.connection_errors,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
    }
