"""Bounded load test of `domaintune serve` on loopback: N chat requests at concurrency C.

    .venv/bin/python bench/serve_load.py --model-dir PATH          # starts a server on a free loopback port
    .venv/bin/python bench/serve_load.py --url http://127.0.0.1:8000 --model NAME   # an already running one

Prints the status counts and the latency distribution; exits 1 on any 5xx (or transport error).
The key for --url comes from DOMAINTUNE_API_KEY. Results: bench/results/serve_load.json (or --output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
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
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = parser.parse_args()

    if args.url:
        report = drive(args.url, os.environ.get("DOMAINTUNE_API_KEY", "none"), args.model, args.requests,
                       args.concurrency, args.max_tokens, args.timeout)
    else:
        with started_server([f"{args.model}={args.model_dir}"], timeout=args.timeout) as (url, key):
            report = drive(url, key, args.model, args.requests, args.concurrency, args.max_tokens, args.timeout)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failed = [status for status in report["status_counts"] if not status.isdigit() or int(status) >= 500]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
