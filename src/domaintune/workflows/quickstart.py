"""The embedded default: financial named-entity extraction from loan agreements.

The data set (1,164 rows, MIT) ships inside the `evals` wheel on PyPI. The wheel is downloaded
once into the cache with `pip download --no-deps` and read as a zip, never installed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console

from domaintune.config import Recipe, validate_recipe
from domaintune.config.recipe import as_recipe
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.metrics import compute_metrics
from domaintune.evaluation.report import write_report
from domaintune.models.registry import cache_dir
from domaintune.storage.jsonl import write_jsonl
from domaintune.storage.rundir import RunDir
from domaintune.workflows.stages import run_recipe

EVALS_REQUIREMENT = "evals==3.0.1.post1"
WHEEL_NAME = "evals-3.0.1.post1-py3-none-any.whl"
MEMBER = "evals/registry/data/ner_finance/samples.jsonl"

# The source prompt asks for chain-of-thought first; a 135M model does better (and far faster)
# when trained to answer with the bracketed list directly.
SYSTEM_PROMPT = (
    "List the named entities as [NAME - TYPE, ...], TYPE being PERSON, ORGANIZATION or LOCATION, "
    "or answer: No entities found"
)


def download_evals_wheel(console: Console) -> Path:
    folder = cache_dir() / "downloads"
    wheel = folder / WHEEL_NAME
    if wheel.exists():
        return wheel
    console.print(f"Downloading {EVALS_REQUIREMENT} (data only, not installed)...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), EVALS_REQUIREMENT]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0 or not wheel.exists():
        detail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DomaintuneError(f"could not download {EVALS_REQUIREMENT} from the package index: {detail[0]}")
    return wheel


def convert_ner_finance(raw_lines: list[str]) -> list[dict]:
    """Source rows hold a long system prompt, the sentence and the answer; keep sentence and answer."""
    rows = []
    for line in raw_lines:
        if not line.strip():
            continue
        source = json.loads(line)
        sentence = next(m["content"] for m in source["input"] if m["role"] == "user")
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": sentence},
                    {"role": "assistant", "content": source["ideal"]},
                ]
            }
        )
    return rows


def ner_finance_dataset(console: Console) -> Path:
    # Re-converted on every call (well under a second) so a changed prompt never meets a stale file.
    target = cache_dir() / "datasets" / "ner_finance.jsonl"
    with zipfile.ZipFile(download_evals_wheel(console)) as wheel:
        raw_lines = wheel.read(MEMBER).decode("utf-8").splitlines()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(target, convert_ner_finance(raw_lines))  # written aside: two quickstarts at once don't collide
    return target


def quickstart_recipe(console: Console) -> Recipe:
    data = yaml.safe_load(resources.files("domaintune.recipes").joinpath("quickstart.yaml").read_text())
    data["data"]["train"] = [str(ner_finance_dataset(console))]
    return validate_recipe(data, source="quickstart recipe")


HEAD_COLUMN = "token head"


def head_recipe(run: RunDir) -> dict:
    """The token-head recipe on the generative run's prepared splits, so both are tested on the same rows."""
    data = yaml.safe_load(resources.files("domaintune.recipes").joinpath("quickstart-head.yaml").read_text())
    generative = run.recipe()
    data["output_dir"] = generative.output_dir
    data["seed"] = generative.seed
    for split in ("train", "validation", "test"):
        data["data"][split] = [str(run.data / f"{split}.jsonl")] if (run.data / f"{split}.jsonl").exists() else []
    return data


def add_token_head(run: RunDir, console: Console) -> dict:
    """Train the token head on the run's splits and put its entity F1 beside the generative models' in
    the run's results and report; returns what was added (with the head's wall time, all phases)."""
    console.rule("[bold]token-classification head (minilm-l6) on the same splits")
    started = time.perf_counter()
    head_run = run_recipe(as_recipe(head_recipe(run)), console=console)
    seconds = time.perf_counter() - started
    results, generated = run.results(), run.samples()
    tagged = {sample["prompt"]: sample["tuned"] for sample in head_run.samples()}
    # Scored on exactly the test items the generative models answered; an item the head set aside
    # (its names not found in the text) counts as answered with nothing.
    predictions = [tagged.get(sample["prompt"], "") for sample in generated]
    metrics = compute_metrics(results["metrics_chosen"]["metrics"], predictions, [s["reference"] for s in generated])
    results["models"][HEAD_COLUMN] = {"model": f"minilm-l6 token classifier ({head_run.root})", "metrics": metrics,
                                      "loss": {}, "seconds": round(seconds, 1)}
    results["token_head"] = {"run_dir": str(head_run.root), "seconds": round(seconds, 1),
                             "items": len(generated), "items_set_aside": sum(s["prompt"] not in tagged for s in generated)}
    run.write_results(results)
    write_report(run.root)
    console.print(f"Token head: entity F1 {metrics['entity_f1']:.3f} (generative: "
                  f"{results['models']['tuned']['metrics'].get('entity_f1', float('nan')):.3f}) in {seconds:.0f} s")
    return results["token_head"]
