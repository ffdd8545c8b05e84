"""End to end with the real bundled SmolLM2 on a few dozen quickstart rows (slow: about a minute)."""
import json

import pytest
from rich.console import Console

import domaintune
from domaintune.workflows.quickstart import ner_finance_dataset, quickstart_recipe

pytestmark = pytest.mark.slow


def test_quickstart_recipe_end_to_end_on_a_slice(tmp_path):
    rows = ner_finance_dataset(Console(stderr=True)).read_text().splitlines()[:48]
    data = tmp_path / "slice.jsonl"
    data.write_text("\n".join(rows) + "\n")
    recipe = quickstart_recipe(Console(stderr=True)).model_dump(mode="json")
    recipe.update(output_dir=str(tmp_path / "runs"))
    recipe["data"].update(train=[str(data)], split={"validation": 0.15, "test": 0.15})
    recipe["training"].update(max_steps=8, batch_size=4, eval_every=4, save_every=4, log_every=2, threads=1)
    recipe["evaluation"].update(max_samples=4, max_new_tokens=24, batch_size=4)

    run_dir = domaintune.run(recipe)

    losses = [json.loads(line)["loss"] for line in run_dir.metrics.read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0]
    results = json.loads((run_dir.eval / "results.json").read_text())
    base, tuned = results["models"]["base"], results["models"]["tuned"]
    # Even 8 steps teach the answer format, which shows as a lower test loss than the base model's.
    assert tuned["loss"]["test"] < base["loss"]["test"]
    assert 0.0 <= tuned["metrics"]["entity_f1"] <= 1.0
    assert (run_dir.export / "merged" / "model.safetensors").exists()
    assert (run_dir.export / "adapter" / "adapter_model.safetensors").exists()
    assert "entity_f1" in run_dir.report.read_text()
