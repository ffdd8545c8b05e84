"""Bounded load test of `domaintune serve` on loopback: N chat requests at concurrency C, then (with
--abuse-paths) the abuse campaign of bench/serve_abuse.py against the same server.

    .venv/bin/python bench/serve_load.py --model-dir PATH          # starts a server on a free loopback port
    .venv/bin/python bench/serve_load.py --model-dir PATH --abuse-paths 10000   # the load and abuse campaign
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 --model NAME   # an already running one

Prints the status counts and the latency distribution (and the abuse checks, /health p95 during the
abuse, RSS growth); exits 1 on any 5xx or connection error, a failed abuse check, a /health p95 over
--health-p95-ms or RSS growth over --rss-growth-mb. The key for --url comes from DOMAINTUNE_API_KEY.
Results: bench/results/serve_load.json (or --output).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_abuse import abuse  # noqa: E402
from serving_bench import percentiles, started_server  # noqa: E402


def one_request(client, model: str, index: int, max_tokens: int) -> tuple[str, float]:
    import openai

    start = time.perf_counter()
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Request {index}: say hello"}],
                                       max_tokens=max_tokens, temperature=0)
        status = "200"
    except openai.APIStatusError as error:
        status = str(error.status_code)
    except openai.APIConnectionError:
        status = "connection-error"
    return status, time.perf_counter() - start


def drive(url: str, key: str, model: str, requests: int, concurrency: int, max_tokens: int, deadline_s: float) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=deadline_s)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda index: one_request(client, model, index, max_tokens), range(requests)))
    wall = time.perf_counter() - start
    return {
        "requests": requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests / wall, 2),
        "status_counts": dict(Counter(status for status, _ in results)),
        "latency_s": percentiles([latency for _, latency in results]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="A running server (key in DOMAINTUNE_API_KEY).")
    target.add_argument("--model-dir", help="Start a server for this causal LM folder (a tiny model keeps it quick).")
    parser.add_argument("--model", default="base", help="The served model name to request.")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600, help="Seconds after which the whole run is abandoned.")
    parser.add_argument("--abuse-paths", type=int, default=0, help="After the load: the abuse campaign, with this many random paths.")
    parser.add_argument("--health-p95-ms", type=float, default=100, help="Target: /health p95 during the abuse.")
    parser.add_argument("--rss-growth-mb", type=float, default=50, help="Target: the server's RSS growth over the abuse.")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = parser.parse_args()

    if args.url:
        if args.abuse_paths:
            parser.error("--abuse-paths needs --model-dir: the campaign starts its own server, with its own keys")
        report = drive(args.url, os.environ.get("DOMAINTUNE_API_KEY", "none"), args.model, args.requests,
                       args.concurrency, args.max_tokens, args.timeout)
    else:
        with tempfile.TemporaryDirectory() as folder:
            # The abuse checks need an admin key and a tenant key with a token budget.
            keys = {"ops": "sk-ops-" + secrets.token_hex(16), "tenant": "sk-tenant-" + secrets.token_hex(16)}
            keys_file = Path(folder) / "keys.json"
            keys_file.write_text(json.dumps([{"id": "ops", "key": keys["ops"], "models": ["*"], "admin": True},
                                             {"id": "tenant", "key": keys["tenant"], "models": [args.model],
                                              "tokens_per_minute": 300}]))
            with started_server([f"{args.model}={args.model_dir}"], ["--keys-file", str(keys_file)],
                                timeout=args.timeout) as (url, key, process):
                report = drive(url, key, args.model, args.requests, args.concurrency, args.max_tokens, args.timeout)
                if args.abuse_paths:
                    report["abuse"] = abuse(url, args.model, keys, args.abuse_paths, process.pid)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failures = [f"status {status}" for status in report["status_counts"] if not status.isdigit() or int(status) >= 500]
    if "abuse" in report:
        found = report["abuse"]
        failures += [f"abuse check {name}" for name, check in found["hostile"].items() if not check["passed"]]
        failures += [f"{found[name]} {name}" for name in ("server_errors", "connection_errors") if found[name]]
        if not found["health_ms"]["p95"] < args.health_p95_ms:
            failures.append(f"/health p95 {found['health_ms']['p95']} ms during the abuse (target < {args.health_p95_ms})")
        if not found["rss_growth_mb"] < args.rss_growth_mb:
            failures.append(f"RSS grew {found['rss_growth_mb']} MB (target < {args.rss_growth_mb})")
    print("passed" if not failures else "FAILED: " + "; ".join(failures))
    return 1 if failures else 0

if __name__ == "__main__":
    sys.exit(main())
