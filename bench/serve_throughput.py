"""`domaintune serve` throughput: N concurrent streaming clients vs the same server taking one request at a time.

    .venv/bin/python bench/serve_throughput.py              # bundled smollm2-135m-instruct, 8 clients, 32 requests, 128 tokens
    .venv/bin/python bench/serve_throughput.py --requests 8 --max-tokens 16   # a quick check that it works

Starts the server on loopback once per engine in --engines (default: torch, today's continuous batching
on transformers, then auto, the default: OpenVINO where it loads the model; `ENGINE:COMPUTE_TYPE` picks a
compute type, e.g. `openvino:float16`, `auto:float32` for CTranslate2 and torch by load), drives it with the official `openai` client, and
prints aggregate generated tokens/s, time to first token and latency p50/p95 for both phases, and each
engine's concurrent tok/s as a multiple of the first's. Bounded: --requests per phase and --timeout seconds per phase (no new request after it).
Writes bench/results/serve_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serving_bench import percentiles, started_server  # noqa: E402

TOPICS = ["a loan agreement", "compound interest", "a credit default swap", "an escrow account", "a balance sheet",
          "inflation", "a mortgage", "diversification", "a bond coupon", "liquidity risk"]


def stream_one(client, index: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"Explain {TOPICS[index % len(TOPICS)]} in detail."}],
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"tokens": tokens, "ttft": first if first is not None else float("nan"), "latency": time.perf_counter() - start}


def phase(url: str, key: str, concurrency: int, requests: int, max_tokens: int, timeout: float) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)
    deadline = time.perf_counter() + timeout

    def bounded(index: int) -> dict | None:
        return stream_one(client, index, max_tokens) if time.perf_counter() < deadline else None

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [result for result in pool.map(bounded, range(requests)) if result is not None]
    wall = time.perf_counter() - start
    tokens = sum(result["tokens"] for result in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "generated_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_s": percentiles([result["ttft"] for result in results]),
        "latency_s": percentiles([result["latency"] for result in results]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="Requests per phase.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--engines", default="torch,auto", help="Servers to run one after the other (first: the baseline).")
    parser.add_argument("--timeout", type=float, default=300, help="Seconds per phase after which no request starts.")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "serve_throughput.json"))
    args = parser.parse_args()

    from domaintune.config.runtime import cpu_description

    report = {"model": "smollm2-135m-instruct", "machine": cpu_description(), "max_tokens": args.max_tokens,
              "engines": {}}
    for engine in args.engines.split(","):
        name, _, compute_type = engine.partition(":")
        extra = ["--max-tokens", str(args.max_tokens), "--engine", name, "--compute-type", compute_type or "auto"]
        with started_server(["smollm2-135m-instruct"], extra) as (url, key, _):
            # Warm-up, two requests at once so that both of auto's engines answer: first-call allocations
            # stay out of the figures.
            phase(url, key, 2, 2, 4, args.timeout)
            batched = phase(url, key, args.concurrency, args.requests, args.max_tokens, args.timeout)
            sequential = phase(url, key, 1, max(1, args.requests // args.concurrency), args.max_tokens, args.timeout)
        report["engines"][engine] = {"concurrent": batched, "one_at_a_time": sequential}
        for phase_name, result in (("concurrent", batched), ("one at a time", sequential)):
            print(f"{engine:>6} {phase_name:>14}: {result['tokens_per_s']:7.1f} generated tok/s over {result['requests']} "
                  f"requests (concurrency {result['concurrency']}); TTFT p50 {result['ttft_s']['p50']:.3f} s p95 "
                  f"{result['ttft_s']['p95']:.3f} s; latency p50 {result['latency_s']['p50']:.2f} s "
                  f"p95 {result['latency_s']['p95']:.2f} s", flush=True)
    baseline = next(iter(report["engines"].values()))["concurrent"]["tokens_per_s"]
    for engine, result in report["engines"].items():
        result["x_baseline_concurrent"] = round(result["concurrent"]["tokens_per_s"] / baseline, 2) if baseline else None
        print(f"{engine}: {result['x_baseline_concurrent']}x the first engine's concurrent tok/s")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.output} ({report['machine']})")


if __name__ == "__main__":
    main()
