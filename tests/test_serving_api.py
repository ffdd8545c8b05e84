"""The OpenAI-compatible server, live on loopback, driven by the official `openai` client."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package is built on
import openai
import pytest
import torch
from conftest import free_port, live_server

KEYS = {"admin": "sk-admin-0123456789", "scoped": "sk-scoped-0123456789", "limited": "sk-limited-0123456789"}
PROMPTS = ["Where is the office?", "Name a city in Europe", "Hello", "What is a loan agreement? Explain briefly please"]


def _lora(base_dir: Path, folder: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    # Random A and B (not peft's zero B) and a large scale, so each adapter visibly changes the outputs.
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(folder)
    return folder


def _classifier(folder: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from domaintune.models.registry import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from domaintune.serving.server import build_app
    from domaintune.serving.settings import ServeSettings
    from domaintune.serving.sources import resolve_sources

    tmp = tmp_path_factory.mktemp("serving")
    adapters = {name: _lora(tiny_model_dir, tmp / name, seed) for name, seed in (("alpha", 1), ("beta", 2))}
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(json.dumps({"keys": [
        {"id": "admin", "key": KEYS["admin"], "models": ["*"], "admin": True},
        {"id": "scoped", "sha256": __import__("hashlib").sha256(KEYS["scoped"].encode()).hexdigest(), "models": ["base"]},
        {"id": "limited", "key": KEYS["limited"], "models": ["*"], "requests_per_minute": 2},
    ]}))
    served = resolve_sources([f"base={tiny_model_dir}", "minilm-l6", f"sentiment={_classifier(tmp / 'clf')}"],
                             adapters=[f"{name}={path}" for name, path in adapters.items()])
    # float32: these tests compare answers with torch's greedy output; `auto` would pick int8 on a VNNI CPU.
    settings = ServeSettings(port=free_port(), keys_file=str(keys_file), dtype="float32", compute_type="float32",
                             max_tokens=64, max_body_bytes=20_000, batch_wait_ms=100, max_loaded_adapters=1)
    app = build_app(served, settings)
    with live_server(app, settings.port) as url:
        yield {"url": url, "adapters": adapters, "app": app}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEYS["admin"], max_retries=0)


def _chat(client, model: str, prompt: str, tokens: int = 8) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=tokens, temperature=0)
    return reply.choices[0].message.content


def _reference(model_dir: Path, prompt: str, tokens: int = 8, adapter: Path | None = None) -> str:
    """Plain transformers greedy generation of one prompt, alone: what the server must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_chat_matches_plain_greedy_generation(client, tiny_model_dir):
    reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": PROMPTS[0]}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == _reference(tiny_model_dir, PROMPTS[0])
    assert reply.choices[0].finish_reason in {"length", "stop"}
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 5


def test_streaming_sends_the_same_text_in_pieces(client):
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": PROMPTS[1]}],
                                            max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1
    assert chunks[-1].choices[0].finish_reason in {"length", "stop"}
    assert "".join(pieces) == _chat(client, "base", PROMPTS[1])


def test_completions_and_model_list(client, tiny_model_dir):
    reply = client.completions.create(model="base", prompt="The office is in", max_tokens=6, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 6
    both = client.completions.create(model="base", prompt=["The office is in", "Hello"], max_tokens=6, temperature=0)
    assert both.choices[0].text == reply.choices[0].text and len(both.choices) == 2
    stream = client.completions.create(model="base", prompt="The office is in", max_tokens=6, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == reply.choices[0].text
    assert {model.id for model in client.models.list()} == {"base", "alpha", "beta", "minilm-l6", "sentiment"}


def test_embeddings_from_the_bundled_encoder(client):
    from sentence_transformers import SentenceTransformer

    from domaintune.models.registry import resolve_model_path

    texts = ["loan agreement", "the borrower repays the loan"]
    reply = client.embeddings.create(model="minilm-l6", input=texts)  # the client asks for base64
    expected = SentenceTransformer(resolve_model_path("minilm-l6"), device="cpu").encode(texts)
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 384
    assert torch.allclose(torch.tensor([item.embedding for item in reply.data]), torch.tensor(expected), atol=1e-5)
    floats = client.embeddings.create(model="minilm-l6", input="loan agreement", encoding_format="float")
    assert torch.allclose(torch.tensor(floats.data[0].embedding), torch.tensor(expected[0]), atol=1e-5)
    # A text past the encoder's 256 tokens is read (and charged) up to them.
    assert client.embeddings.create(model="minilm-l6", input="loan " * 400).usage.prompt_tokens == 256


def test_classification_endpoint(server):
    response = httpx.post(server["url"] + "/v1/classify", headers={"Authorization": f"Bearer {KEYS['admin']}"},
                          json={"model": "sentiment", "input": ["great service", "terrible delay"]})
    assert response.status_code == 200
    data = response.json()["data"]
    assert [item["index"] for item in data] == [0, 1]
    for item in data:
        assert set(item["scores"]) == {"negative", "neutral", "positive"}
        assert item["label"] == max(item["scores"], key=item["scores"].get)
        assert abs(sum(item["scores"].values()) - 1) < 1e-4


def test_adapters_selected_by_model_name(client, server, tiny_model_dir):
    # max_loaded_adapters is 1: switching back and forth also exercises eviction and reloading.
    outputs = {name: _chat(client, name, PROMPTS[2]) for name in ("alpha", "beta", "base", "alpha")}
    assert len({outputs["alpha"], outputs["beta"], outputs["base"]}) == 3
    assert outputs["alpha"] == _reference(tiny_model_dir, PROMPTS[2], adapter=server["adapters"]["alpha"])
    assert outputs["base"] == _reference(tiny_model_dir, PROMPTS[2])


def test_concurrent_requests_are_batched_and_equal_unbatched_greedy(client, server, tiny_model_dir):
    expected = [_reference(tiny_model_dir, prompt, tokens=10) for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        answers = list(pool.map(lambda prompt: _chat(client, "base", prompt, tokens=10), PROMPTS * 2))
    assert answers == expected * 2
    metrics = httpx.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {KEYS['admin']}"}).text
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("domaintune_batch_size_")}
    assert values["domaintune_batch_size_sum"] > values["domaintune_batch_size_count"]  # some batches held several requests


def test_unknown_model_is_404_in_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        _chat(client, "no-such-model", "hi")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    raw = httpx.post(server["url"] + "/v1/embeddings", headers={"Authorization": f"Bearer {KEYS['admin']}"},
                     json={"model": "no-such-model", "input": "x"})
    assert raw.status_code == 404 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


ENDPOINTS = [
    ("GET", "/v1/models", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"model": "minilm-l6", "input": "hi"}),
    ("POST", "/v1/classify", {"model": "sentiment", "input": "hi"}),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEYS["admin"]}])
def test_every_endpoint_but_health_needs_a_valid_key(server, headers):
    for method, path, body in ENDPOINTS:
        response = httpx.request(method, server["url"] + path, headers=headers, json=body)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server["url"] + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_scoped_key_is_refused_other_models(server):
    scoped = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEYS["scoped"], max_retries=0)
    assert _chat(scoped, "base", "hi", tokens=2) is not None
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _chat(scoped, "alpha", "hi", tokens=2)
    assert caught.value.body["param"] == "model"
    assert [model.id for model in scoped.models.list()] == ["base"]


def test_rate_limit_answers_429_with_retry_after(server):
    limited = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEYS["limited"], max_retries=0)
    limited.models.list()
    limited.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        limited.models.list()
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60


def test_oversized_body_is_413(server):
    response = httpx.post(server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEYS['admin']}"},
                          json={"model": "base", "messages": [{"role": "user", "content": "x" * 30_000}]})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    body = json.dumps({"model": "base", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode()
    chunked = httpx.post(server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEYS['admin']}"},
                         content=iter([body[:10_000], body[10_000:]]))  # no Content-Length: counted while read
    assert chunked.status_code == 413 and chunked.json()["error"]["message"].startswith("Request body is larger")


@pytest.mark.parametrize("change, param", [
    ({"max_tokens": 65}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 10}, "messages"),
])
def test_invalid_fields_are_400_naming_the_field(client, change, param):
    request = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.body["param"] == param
    assert param in caught.value.body["message"]


def test_audit_log_has_no_content_and_no_key(client, caplog):
    with caplog.at_level(logging.INFO, logger="domaintune.audit"):
        _chat(client, "base", "my secret question", tokens=3)
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "domaintune.audit"]
    line = next(line for line in lines if line["endpoint"] == "/v1/chat/completions")
    assert line["key_id"] == "admin" and line["model"] == "base" and line["status"] == 200
    assert line["completion_tokens"] <= 3 and line["latency_ms"] > 0
    assert "secret question" not in caplog.text and KEYS["admin"] not in caplog.text


def test_metrics_count_requests_tokens_latency_and_errors(client, server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    _chat(client, "base", "count me", tokens=3)
    text = httpx.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {KEYS['admin']}"}).text
    assert 'domaintune_requests_total{endpoint="/v1/chat/completions",model="base",status="200"}' in text
    assert 'domaintune_errors_total{type="authentication_error"}' in text
    assert 'domaintune_tokens_total{kind="completion",model="base"}' in text
    assert 'domaintune_request_latency_seconds_bucket{endpoint="/v1/chat/completions",le="0.5"}' in text


def test_log_content_puts_prompt_and_completion_in_the_audit_line(client, server, caplog):
    settings = server["app"].state.domaintune.settings
    settings.log_content = True
    try:
        with caplog.at_level(logging.INFO, logger="domaintune.audit"):
            answer = _chat(client, "base", "an auditable question", tokens=3)
    finally:
        settings.log_content = False
    line = json.loads(next(r.getMessage() for r in caplog.records if r.name == "domaintune.audit"))
    assert "an auditable question" in line["prompt"] and line["completion"] == answer


def test_the_default_engine_is_ctranslate2_alone_and_torch_concurrently_and_each_remains_on_request(
        server, tiny_model_dir):
    from domaintune.serving.ctranslate2_engine import CTranslate2Engine
    from domaintune.serving.engine import Generator
    from domaintune.serving.engine_choice import text_engine
    from domaintune.serving.load_router import LoadRouter
    from domaintune.serving.settings import ServeSettings

    generator = server["app"].state.domaintune.generator
    assert isinstance(generator, LoadRouter)
    assert isinstance(generator.alone, CTranslate2Engine) and isinstance(generator.together, Generator)
    assert generator.engine == {"engine": "ctranslate2 (one request at a time) + torch (concurrent)",
                                "compute_type": "float32 + float32"}
    for name, kind in (("torch", Generator), ("ctranslate2", CTranslate2Engine)):
        single = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(engine=name, dtype="float32",
                                                                                compute_type="float32"))
        try:
            assert isinstance(single, kind) and single.engine["engine"] == name
        finally:
            single.close()


def test_sampled_requests_batch_apart_from_greedy_ones():
    from domaintune.serving.batching import GenerationRequest
    from domaintune.serving.ctranslate2_engine import CTranslate2Engine

    def request(temperature, top_p=1.0):
        return GenerationRequest(model="base", prompt_ids=[1, 2], max_tokens=4, temperature=temperature, top_p=top_p)

    key = CTranslate2Engine.batch_key
    assert key(request(0.0)) == key(request(0.0, top_p=0.5))  # top_p means nothing to greedy decoding
    assert key(request(0.7)) != key(request(0.0)) and key(request(0.7)) != key(request(0.7, top_p=0.9))
