"""The workbench's start time and the runs page's render time with 200 runs (issue 15: under 5 s and 1 s
on the 2-core machine). Prints the figures; asserts nothing.

    PYTHONPATH=src python bench/ui_bench.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = """
import time; started = time.perf_counter()
from fastapi.testclient import TestClient
from domaintune.workbench.app import create_app
client = TestClient(create_app({runs!r}), base_url="http://127.0.0.1:7860")
assert client.get("/").status_code == 200
print(time.perf_counter() - started)
"""


def fake_runs(runs: Path, count: int) -> None:
    """`count` finished runs with a recipe, metrics and results, as the runs page reads them."""
    results = {"models": {"base": {"metrics": {"exact_match": 0.2}}, "tuned": {"metrics": {"exact_match": 0.6}}},
               "comparison": {"exact_match": {"delta": 0.4, "low": 0.2, "high": 0.6, "verdict": "better"}}}
    for index in range(count):
        root = runs / f"run{index:03d}-20260101-000000"
        for folder in ("eval", "model", "data", "export", "workbench"):
            (root / folder).mkdir(parents=True)
        (root / "recipe.yaml").write_text(f"name: run{index}\nmethod: {{name: lora}}\nobjective: {{name: sft}}\n")
        (root / "fingerprint.json").write_text("{}")
        (root / "data" / "train.jsonl").write_text("")
        (root / "model" / "training.json").write_text("{}")
        (root / "eval" / "results.json").write_text(json.dumps(results))
        (root / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "max_steps": 100, "time": s, "loss": 1 / s}) + "\n"
                                                    for s in range(1, 101)))
        (root / "workbench" / "job.json").write_text(json.dumps({"pid": 1, "started": 0}))
        (root / "workbench" / "result.json").write_text(json.dumps({"state": "done", "ended": 60}))


def main() -> None:
    from fastapi.testclient import TestClient

    from domaintune.workbench.app import create_app

    with tempfile.TemporaryDirectory() as folder:
        runs = Path(folder) / "runs"
        runs.mkdir()
        started = subprocess.run([sys.executable, "-c", START.format(runs=str(runs))], capture_output=True, text=True,
                                 check=True)
        print(f"app start (new process: imports, app, first page): {float(started.stdout):.2f} s")
        fake_runs(runs, 200)
        client = TestClient(create_app(runs), base_url="http://127.0.0.1:7860")
        client.get("/")  # templates compiled once
        timings = []
        for _ in range(5):
            began = time.perf_counter()
            page = client.get("/")
            timings.append(time.perf_counter() - began)
        assert page.text.count('<tr class="run"') == 200
        print(f"runs page with 200 runs: median {sorted(timings)[2]:.3f} s (of 5)")


if __name__ == "__main__":
    main()
