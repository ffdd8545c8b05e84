"""Every recipe in examples/, as a newcomer would try it: `recipe check`, `estimate`, `run` and, where the
run leaves a servable causal LM, one request through the server. A tiny model and a few steps are swapped
in through --set; anything else is the example as shipped. A new example is covered by adding its file.
A traceback anywhere fails the test: user mistakes are one message and exit code 2."""
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.core.errors import DomaintuneError
from domaintune.storage.rundir import RunDir

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
SMALL = {"training.max_steps": 2, "training.eval_every": 1, "training.save_every": 1, "training.log_every": 1,
         "training.threads": 1, "training.precision": "fp32", "training.early_stopping": None,
         "data.max_tokens": 96}
EVALUATION = {"evaluation.max_samples": 3, "evaluation.max_new_tokens": 4, "evaluation.forgetting": False,
              "evaluation.shots": 1, "evaluation.batch_size": 4, "export.gguf": []}


def overrides(recipe_file: Path, tmp_path: Path, model_dirs: dict[str, Path]) -> list[str]:
    recipe = yaml.safe_load(recipe_file.read_text())
    encoder = (recipe.get("model") or {}).get("name") == "minilm-l6"
    values = {"output_dir": str(tmp_path / "runs"), "model.name": str(model_dirs["encoder" if encoder else "causal"]),
              **SMALL, **EVALUATION, "distributed.processes": 1}
    if (recipe.get("method") or {}).get("top_layers"):
        values["method.top_layers"] = 1  # the tiny model has 2 blocks
    objective = (recipe.get("objective") or {}).get("name")
    if objective in ("grpo", "ppo"):
        values.update({"objective.max_new_tokens": 4, "training.batch_size": 4})
    if objective == "fewshot":
        values["objective.max_steps"] = 2
    for index, stage in enumerate(recipe.get("stages") or []):
        # A stage's own training keys win over the recipe's, so they are set per stage too.
        values.update({f"stages.{index}.training.{key.split('.')[1]}": value
                       for key, value in SMALL.items() if key.startswith("training.")})
        if (stage.get("objective") or {}).get("name") in ("grpo", "ppo"):
            values[f"stages.{index}.objective.max_new_tokens"] = 4
            values[f"stages.{index}.training.batch_size"] = 4
    if recipe.get("compare"):
        values["compare.variants"] = [{"method": {"name": "lora", "r": 2, "alpha": 4}}, {"method": {"name": "ia3"}}]
    return [item for key, value in values.items() for item in ("--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")]


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from domaintune.models.registry import resolve_model_path

    encoder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    return {"causal": tiny_model_dir, "encoder": encoder}


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    # A SystemExit is the CLI's own exit; any other exception escaped as a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback from `domaintune {' '.join(args[:2])}`:\n{result.output[-3000:]}")
    return result


@pytest.mark.parametrize("recipe_file", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_every_command_works_on_every_example(recipe_file, tmp_path, model_dirs):
    settings = overrides(recipe_file, tmp_path, model_dirs)
    checked = invoke("recipe", "check", str(recipe_file), *settings)
    assert checked.exit_code == 0, checked.output

    estimated = invoke("estimate", str(recipe_file), *settings)
    assert estimated.exit_code == 0, estimated.output[-3000:]

    ran = invoke("run", str(recipe_file), *settings)
    assert ran.exit_code == 0, ran.output[-3000:]

    runs = sorted((tmp_path / "runs").glob("*/recipe.yaml"), key=lambda path: path.stat().st_mtime)
    assert runs, "run left no run directory"
    last = RunDir.open(runs[-1].parent)
    assert last.results().get("models"), "the last run has no evaluation results"
    _one_request(last, tmp_path)


def _one_request(run: RunDir, tmp_path: Path) -> None:
    """One request through the server for what the run exported: chat for a causal LM (merged or as an
    adapter), classify for a task head or reward model, embeddings for a sentence encoder."""
    from domaintune.serving.server import build_app
    from domaintune.serving.settings import ServeSettings
    from domaintune.serving.sources import resolve_sources

    try:
        served = resolve_sources([str(run.root)])
    except DomaintuneError:
        return  # nothing servable (a SetFit head), said in one message
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"id": "test", "key": "sk-test-every-example", "models": ["*"]}]}))
    headers = {"Authorization": "Bearer sk-test-every-example"}
    with TestClient(build_app(served, ServeSettings(keys_file=str(keys), dtype="float32", max_tokens=8))) as client:
        if served.chat:
            model = next(iter(served.adapters), served.chat[0])
            reply = client.post("/v1/chat/completions", headers=headers, json={
                "model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["role"] == "assistant"
        for model in served.classifiers:
            reply = client.post("/v1/classify", headers=headers, json={"model": model, "input": ["a loan"]})
            assert reply.status_code == 200, reply.text
            item = reply.json()["data"][0]
            assert "label" in item or "tokens" in item  # a label per text, or labelled tokens
        for model in served.embeddings:
            reply = client.post("/v1/embeddings", headers=headers,
                                json={"model": model, "input": ["a loan"], "encoding_format": "float"})
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["data"][0]["embedding"]) > 0
