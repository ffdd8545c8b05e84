"""On a CUDA device: the padding-free paths are exact and read nothing back, and a model trained on the
GPU evaluates, exports and serves. Skipped without CUDA (`pytest -m gpu` on a GPU machine)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from domaintune.training.packing import FLASH_ATTENTION, PackedCollator, ordered_supervised_loss, packed_attention_for

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def on_gpu(batch: dict) -> dict:
    return {key: value.cuda(non_blocking=True) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


@pytest.mark.parametrize("attention", ["sdpa", FLASH_ATTENTION])
def test_packed_equals_unpacked_on_cuda_without_host_syncs(tiny_model_dir, attention):
    from test_engine import HostSyncs, gpu_layout_features, unpacked_loss_and_grads

    if attention == FLASH_ATTENTION and packed_attention_for("cuda", bf16=True) != FLASH_ATTENTION:
        pytest.skip("flash-attn is not installed")
    # flash-attn computes in bf16 only: compare in bf16 there, with bf16's tolerance.
    dtype, tolerance = (torch.bfloat16, 3e-2) if attention == FLASH_ATTENTION else (torch.float32, 1e-4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).cuda()
    model.config.use_cache = False
    features = gpu_layout_features(tokenizer)
    expected_loss, expected_grads = unpacked_loss_and_grads(model, tokenizer, features)

    batch = PackedCollator(True, max(len(f["input_ids"]) for f in features), tokenizer.pad_token_id,
                           attention=attention)(features)
    labels = on_gpu({"labels": batch.pop("labels")})["labels"]
    batch = on_gpu(batch)
    torch.cuda.synchronize()
    model.zero_grad()
    model.config._attn_implementation = attention
    syncs = HostSyncs()
    if attention == "sdpa":
        torch.cuda.set_sync_debug_mode("error")  # any device-to-host wait raises
    try:
        with syncs:
            loss = ordered_supervised_loss(model(**batch), labels)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if attention == "sdpa":  # flash's path goes through transformers' own packed-row check, one read per forward
        assert syncs.found == []
    assert torch.allclose(loss.float(), expected_loss.float(), rtol=tolerance, atol=tolerance)
    for name, grad in expected_grads.items():
        got = model.get_parameter(name).grad.float()
        assert torch.nn.functional.cosine_similarity(got.flatten(), grad.float().flatten(), dim=0) > 1 - tolerance, name


def test_a_model_trained_on_the_gpu_evaluates_exports_and_serves(tiny_recipe, monkeypatch):
    import urllib.request

    from conftest import free_port, live_server

    import domaintune
    from domaintune.serving.server import build_app
    from domaintune.serving.settings import ServeSettings
    from domaintune.serving.sources import resolve_sources

    run = domaintune.train(tiny_recipe)
    summary = json.loads((run.model / "training.json").read_text())
    assert summary["global_step"] == tiny_recipe["training"]["max_steps"]
    losses = [line["loss"] for line in map(json.loads, run.metrics.read_text().splitlines()) if "loss" in line]
    assert losses[-1] < losses[0]

    results = domaintune.evaluate(run.root)
    assert set(results["models"]) == {"base", "tuned"}
    # Evaluation answers on the GPU (auto is torch there), not on a CPU engine.
    assert all(model["generation"]["engine"] == "torch" and model["generation"]["device"] == "cuda"
               for model in results["models"].values())
    written = domaintune.export_model(run.root)
    assert written

    monkeypatch.setenv("DOMAINTUNE_API_KEYS", "gpu:sk-gpu-test")
    settings = ServeSettings(port=free_port(), dtype="float32", compute_type="float32", max_tokens=16)
    app = build_app(resolve_sources([f"tuned={run.root}"], None, None), settings)
    with live_server(app, settings.port) as url:
        body = {"model": "tuned", "max_tokens": 4, "messages": [{"role": "user", "content": "Where is the office?"}]}
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Authorization": "Bearer sk-gpu-test"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200 and json.loads(response.read())["choices"][0]["message"]["role"] == "assistant"


def test_the_servers_encoders_answer_on_the_gpu_as_on_the_cpu(tmp_path, monkeypatch):
    from transformers import BertConfig, BertForSequenceClassification

    from domaintune.models.registry import resolve_model_path
    from domaintune.serving import encoders

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "head")
    tokenizer.save_pretrained(tmp_path / "head")
    texts = ["Acme Bank lends", "hi"]
    on_gpu = encoders.Classifier(str(tmp_path / "head"))
    embedder = encoders.Embedder(resolve_model_path("minilm-l6"))
    assert on_gpu.model.device.type == "cuda" and embedder.model.device.type == "cuda"
    gpu_results, gpu_embeddings = on_gpu.classify(texts)[0], embedder.embed(texts)

    monkeypatch.setattr(encoders, "inference_device", lambda: "cpu")
    monkeypatch.setattr("domaintune.models.loading.inference_device", lambda: "cpu")
    cpu_results = encoders.Classifier(str(tmp_path / "head")).classify(texts)[0]
    cpu_embeddings = encoders.Embedder(resolve_model_path("minilm-l6")).embed(texts)
    assert [row["label"] for row in gpu_results] == [row["label"] for row in cpu_results]
    assert torch.allclose(torch.tensor(gpu_embeddings), torch.tensor(cpu_embeddings), atol=1e-3)
