import json
import subprocess
import sys
from pathlib import Path

import pytest

import domaintune
from domaintune.core.errors import DomaintuneError
from domaintune.training.forecast import lookup_throughput, setup_key
from domaintune.workflows import estimate


def test_estimate_counts_the_work_and_predicts_the_training_time(tiny_recipe):
    # 48 train rows, batch 4, 12 steps: exactly one epoch, so the token count is exact.
    tiny_recipe["training"]["packing"] = False  # padded batches: the Trainer counts their real tokens itself
    result = domaintune.estimate(tiny_recipe)
    run = domaintune.train(tiny_recipe)

    logs = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    tokens_seen = max(line.get("num_input_tokens_seen", 0) for line in logs)
    assert result["work"]["steps"] == 12
    assert result["work"]["train_tokens"] == tokens_seen
    assert result["work"]["evaluations"] == 3
    assert result["peak_rss_mb"] > 100

    # Not a speed test: the probe's rate must describe the real run of the same engine. A tiny
    # model's steps are dominated by fixed overheads, hence the wide band.
    predicted = result["seconds"]["training"] + result["seconds"]["validation"]
    actual = json.loads((run.model / "training.json").read_text())["runtime_seconds"]
    assert actual / 3 < predicted < actual * 3


def test_training_records_its_speed_for_the_next_estimate(tiny_recipe):
    recipe = domaintune.load(tiny_recipe)
    domaintune.train(recipe)
    measured = lookup_throughput(setup_key(recipe, threads=1, bf16=False))
    assert measured["tokens_per_second"] > 0 and measured["peak_rss_mb"] > 0


def test_a_cut_short_speed_file_is_measured_again_not_an_error(tmp_path, monkeypatch):
    from domaintune.training import forecast

    monkeypatch.setattr(forecast, "throughput_file", lambda: tmp_path / "throughput.json")
    (tmp_path / "throughput.json").write_text('{"model|lora": {"tokens_per_sec')  # a write that was cut off
    assert lookup_throughput("model|lora") is None
    forecast.record_throughput("model|lora", {"tokens_per_second": 100.0})
    assert lookup_throughput("model|lora") == {"tokens_per_second": 100.0}


def test_a_curriculum_is_estimated_stage_by_stage(tiny_recipe):
    tiny_recipe["stages"] = [{"label": "first", "training": {"max_steps": 4}}, {"label": "second"}]
    result = domaintune.estimate(tiny_recipe)
    assert [stage["stage"] for stage in result["stages"]] == ["tiny-first", "tiny-second"]
    assert [stage["work"]["steps"] for stage in result["stages"]] == [4, 12]
    assert result["total_seconds"] == pytest.approx(sum(stage["total_seconds"] for stage in result["stages"]), abs=0.2)
    assert result["not_estimated"] == []


def test_an_encoder_recipe_is_estimated_without_a_chat_template(tiny_recipe):
    # The bundled MiniLM encoder has no chat template: lengths are counted on the plain turns and
    # there is no generation to time.
    tiny_recipe.update(model={"name": "minilm-l6"}, method={"name": "head"},
                       objective={"name": "classify", "task": "sequence"})
    rows = [{"text": f"ticket {i} about {'billing' if i % 2 else 'login'}", "label": "billing" if i % 2 else "login"}
            for i in range(40)]
    data = Path(tiny_recipe["data"]["train"][0]).with_name("labels.jsonl")
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tiny_recipe["data"] = {"train": [str(data)], "format": "labelled", "max_tokens": 64}
    result = domaintune.estimate(tiny_recipe)
    assert result["work"]["steps"] == 12 and result["speed"]["tokens_per_second"] > 0
    assert "generation_batch_seconds" not in result["speed"]


def test_a_script_without_a_main_guard_can_estimate(tiny_recipe, tmp_path):
    # The probe runs in a fresh interpreter: multiprocessing's spawn would import this script again in
    # the child, re-run its top level and fail there.
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(tiny_recipe))
    script = tmp_path / "plan.py"
    script.write_text("import json, sys\nimport domaintune\n"
                      "result = domaintune.estimate(json.loads(open(sys.argv[1]).read()))\n"
                      "print('steps', result['work']['steps'])\n")
    done = subprocess.run([sys.executable, str(script), str(recipe_file)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "steps 12"


def test_a_failing_probe_says_why(tiny_recipe, monkeypatch):
    # A child that dies before writing its outcome: the last line of its stderr is the reason given.
    monkeypatch.setattr(estimate, "PROBE_CHILD", "import sys; sys.exit('the probe ran out of memory')")
    with pytest.raises(DomaintuneError, match="the speed probe failed: the probe ran out of memory"):
        domaintune.estimate(tiny_recipe)
