"""The README's screenshots of the workbench, retaken by running this script: the runs page, a run's
page with its curves, the new-run page with the data preview (a file with one bad row), the comparison
of two runs and the arena with both answers. Two real runs of a tiny random model are trained first
(~2 min on 2 cores), so every page shows what the app shows; the model's answers are noise.

    PYTHONPATH=src python bench/ui_screenshots.py [--out docs/images]

Needs Playwright and /usr/bin/chromium (as the browser tests).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny model, live server and JSONL writer

from conftest import build_tiny_model, free_port, live_server, write_jsonl  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Oslo", "Dublin", "Prague", "Warsaw"]


def office_rows(count: int = 60) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Request {i}: where is the office?"},
                          {"role": "assistant", "content": f"[{CITIES[i % len(CITIES)]} - LOCATION]"}]}
            for i in range(count)]


def train_runs(runs: Path, model: Path, data: Path) -> list[str]:
    """Two finished runs (LoRA and full fine-tuning) of the tiny model: trained, evaluated, exported."""
    from domaintune import api

    names = []
    for method in ({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, {"name": "full"}):
        recipe = {
            "name": f"offices-{method['name']}", "output_dir": str(runs), "model": {"name": str(model)},
            "data": {"train": [str(data)], "max_tokens": 128}, "method": method, "inference": {"engine": "torch"},
            "training": {"max_steps": 24, "batch_size": 4, "lr": 2e-2 if method["name"] == "lora" else 2e-3,
                         "eval_every": 4, "save_every": 24, "log_every": 2, "threads": 1, "precision": "fp32",
                         "warmup_ratio": 0.1, "early_stopping": None},
            "evaluation": {"metrics": ["exact_match"], "max_samples": 6, "max_new_tokens": 12},
            "export": {"dtype": "float32"},
        }
        names.append(api.run(recipe).root.name)
    return names


def main() -> None:
    from playwright.sync_api import sync_playwright

    from domaintune.workbench.app import create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        runs = folder / "runs"
        model = build_tiny_model(folder / "tiny-llama")
        names = train_runs(runs, model, write_jsonl(folder / "offices.jsonl", office_rows()))
        upload = folder / "offices.jsonl"
        lines = upload.read_text(encoding="utf-8").splitlines()
        lines.insert(3, json.dumps({"messages": [{"role": "user", "content": "a question with no answer"}]}))
        upload.write_text("\n".join(lines) + "\n", encoding="utf-8")

        with live_server(create_app(runs), free_port()) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport=VIEWPORT)

            def shoot(name: str) -> None:
                page.screenshot(path=str(out / f"workbench-{name}.png"))
                print(out / f"workbench-{name}.png")

            page.goto(url)
            shoot("runs")
            page.goto(f"{url}/runs/{names[0]}")
            page.wait_for_function("document.getElementById('latest').textContent !== '–'")
            shoot("run")
            page.goto(f"{url}/new")
            page.set_input_files("#file", str(upload))
            page.click("#upload")
            page.wait_for_selector("#rejected")
            # From the mapping down: the detected format, the rows rendered for the model, the rejected row.
            page.set_viewport_size({**VIEWPORT, "height": 960})
            page.locator("form.mapping").evaluate("form => form.scrollIntoView({block: 'start'})")
            shoot("new-run")
            page.set_viewport_size(VIEWPORT)
            page.goto(f"{url}/compare?run={names[0]}&run={names[1]}")
            shoot("compare")
            page.goto(f"{url}/runs/{names[0]}/arena")
            page.fill("#message", "Where is the office for request 7?")
            page.click("#send")
            page.wait_for_selector(".turn.complete", timeout=120_000)
            shoot("arena")
            browser.close()


if __name__ == "__main__":
    main()
