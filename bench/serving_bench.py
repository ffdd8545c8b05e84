"""Shared by the serving benchmarks: a `domaintune serve` subprocess on a free loopback port, and percentiles."""
from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 4) if ordered else float("nan")

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)}


@contextlib.contextmanager
def started_server(models: list[str], extra: list[str] | tuple[str, ...] = (), timeout: float = 300):
    """(url, key, process) of a fresh server; it is stopped on exit, whatever happens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = "sk-bench-" + secrets.token_hex(16)
    command = [sys.executable, "-m", "domaintune.cli", "serve", *models, "--port", str(port), *extra]
    process = subprocess.Popen(command, env={**os.environ, "DOMAINTUNE_API_KEYS": f"bench:{key}"},
                               stderr=subprocess.DEVNULL)  # the audit log: one line per request
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with code {process.returncode}: {' '.join(command)}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start within {timeout} s") from None
                time.sleep(0.5)
        yield url, key, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
