"""The server against hostile and clumsy clients: input caps, scopes, token budgets, label cardinality,
error shapes, redaction, and the load and abuse campaign run small (bench/serve_load.py)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from conftest import free_port, live_server

from domaintune.core.errors import DomaintuneError
from domaintune.serving.auth import load_keys

KEYS = {"ops": "sk-ops-0123456789", "scoped": "sk-scoped-0123456789", "counted": "sk-counted-0123456789",
        "budget": "sk-budget-0123456789", "streamer": "sk-streamer-0123456789", "leaver": "sk-leaver-0123456789"}
OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}


def _headers(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from domaintune.serving.server import build_app
    from domaintune.serving.settings import ServeSettings
    from domaintune.serving.sources import resolve_sources

    keys_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys_file.write_text(f"""keys:
  - id: ops
    key: {KEYS['ops']}
    models: ["*"]
    admin: true
  - id: scoped
    key: {KEYS['scoped']}
    models: [base]
  - id: counted
    key: {KEYS['counted']}
    models: ["*"]
    requests_per_minute: 3
  - id: budget
    key: {KEYS['budget']}
    models: ["*"]
    tokens_per_minute: 100
  - id: streamer
    key: {KEYS['streamer']}
    models: ["*"]
    tokens_per_minute: 100000
  - id: leaver
    key: {KEYS['leaver']}
    models: ["*"]
    tokens_per_minute: 100000
""")
    settings = ServeSettings(port=free_port(), keys_file=str(keys_file), dtype="float32", max_tokens=256, batch_wait_ms=20)
    app = build_app(resolve_sources([f"base={tiny_model_dir}"]), settings)
    with live_server(app, settings.port) as url:
        yield {"url": url, "state": app.state.domaintune}


def _post(server, path: str, key: str, body: dict) -> httpx.Response:
    return httpx.post(server["url"] + path, headers=_headers(key), json=body, timeout=60)


def _assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == OPENAI_ERROR_FIELDS
    if param is not None:
        assert error["param"] == param and param in error["message"]
    return error


# 1. prompt lists: capped, tokenised off the event loop, each prompt charged as a request
def test_a_prompt_list_over_the_cap_is_400_before_any_work(server):
    reply = _post(server, "/v1/completions", "ops", {"model": "base", "prompt": ["a"] * 17, "max_tokens": 1})
    assert "16" in _assert_openai_error(reply, 400, "prompt")["message"]
    assert _post(server, "/v1/completions", "ops", {"model": "base", "prompt": ["a"] * 16, "max_tokens": 1}).status_code == 200


def test_each_prompt_of_a_list_counts_against_requests_per_minute(server):
    assert _post(server, "/v1/completions", "counted", {"model": "base", "prompt": ["a", "b"], "max_tokens": 1}).status_code == 200
    # 2 of 3 used: two more prompts are over the limit, one is not.
    _assert_openai_error(_post(server, "/v1/completions", "counted", {"model": "base", "prompt": ["a", "b"], "max_tokens": 1}), 429)
    assert _post(server, "/v1/completions", "counted", {"model": "base", "prompt": ["a"], "max_tokens": 1}).status_code == 200


class _ThreadRecordingTokenizer:
    """The generator's tokenizer, noting whether each call ran on a thread with a running event loop."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.on_event_loop: list[bool] = []

    def _note(self) -> None:
        try:
            asyncio.get_running_loop()
            self.on_event_loop.append(True)
        except RuntimeError:
            self.on_event_loop.append(False)

    def __call__(self, *args, **kwargs):
        self._note()
        return self.tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self._note()
        return self.tokenizer.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_prompts_are_tokenised_off_the_event_loop(server, monkeypatch):
    generator = server["state"].generator
    recorder = _ThreadRecordingTokenizer(generator.tokenizer)
    monkeypatch.setattr(generator, "tokenizer", recorder)
    assert _post(server, "/v1/completions", "ops", {"model": "base", "prompt": ["a", "b"], "max_tokens": 1}).status_code == 200
    assert _post(server, "/v1/chat/completions", "ops", {"model": "base", "messages": [{"role": "user", "content": "hi"}],
                                                          "max_tokens": 1}).status_code == 200
    assert recorder.on_event_loop and not any(recorder.on_event_loop)


def test_too_many_pending_generations_is_503_in_openai_shape(server, monkeypatch):
    monkeypatch.setattr(server["state"].settings, "max_pending", 1)
    reply = _post(server, "/v1/completions", "ops", {"model": "base", "prompt": ["a", "b"], "max_tokens": 1})
    _assert_openai_error(reply, 503)
    assert reply.headers["Retry-After"]


# 2. stop strings: at most 4, at most 64 characters each
@pytest.mark.parametrize("stop", [["x"] * 5, ["y" * 65], [""], "z" * 65])
def test_stop_lists_beyond_openais_limits_are_400(server, stop):
    reply = _post(server, "/v1/completions", "ops", {"model": "base", "prompt": "hi", "max_tokens": 1, "stop": stop})
    error = _assert_openai_error(reply, 400)
    assert error["param"] in {"stop", "stop.0"} and error["message"].startswith(error["param"])


def test_four_stop_strings_of_64_characters_are_accepted(server):
    reply = _post(server, "/v1/completions", "ops", {"model": "base", "prompt": "hi", "max_tokens": 1, "stop": ["s" * 64] * 4})
    assert reply.status_code == 200, reply.text


# 3. metric labels: route templates, `other` for unmatched paths
def test_metric_labels_are_route_templates_not_raw_paths(server):
    for index in range(5):
        assert httpx.get(server["url"] + f"/no-such-path-{index}").status_code == 404
    text = httpx.get(server["url"] + "/metrics", headers=_headers("ops")).text
    assert "no-such-path" not in text
    assert 'domaintune_requests_total{endpoint="other",model="",status="404"}' in text


# 4. token budgets: reserved at admission, settled at the end; dropped streams audited as such
def test_concurrent_requests_can_not_all_pass_the_token_budget(server):
    body = {"model": "base", "prompt": "Hello there", "max_tokens": 40}  # a reservation of 40 + the prompt: two fit in 100
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: _post(server, "/v1/completions", "budget", body), range(6)))
    passed = [reply for reply in replies if reply.status_code == 200]
    assert 1 <= len(passed) <= 2
    for reply in replies:
        if reply.status_code != 200:
            _assert_openai_error(reply, 429)
    assert sum(reply.json()["usage"]["total_tokens"] for reply in passed) <= 100


def test_a_request_larger_than_the_whole_budget_is_400_naming_max_tokens(server):
    _assert_openai_error(_post(server, "/v1/completions", "budget", {"model": "base", "prompt": "hi", "max_tokens": 200}),
                         400, "max_tokens")


def _audit_lines(caplog) -> list[dict]:
    return [json.loads(record.getMessage()) for record in caplog.records if record.name == "domaintune.audit"]


def test_a_dropped_stream_is_audited_and_charged_for_what_was_generated(server, caplog, monkeypatch):
    from domaintune.serving import batching

    add = batching.Row.add

    def slow_add(self, token):  # keeps the stream running well after the client has gone, on either engine
        time.sleep(0.02)
        add(self, token)

    monkeypatch.setattr(batching.Row, "add", slow_add)
    with caplog.at_level(logging.INFO, logger="domaintune.audit"):
        body = {"model": "base", "prompt": "Tell me a long story", "max_tokens": 250, "stream": True}
        with httpx.stream("POST", server["url"] + "/v1/completions", headers=_headers("streamer"), json=body) as reply:
            chunks = 0
            for line in reply.iter_lines():
                chunks += line.startswith("data: ")
                if chunks == 3:
                    break
        # Generous: the loop ends as soon as the line is written, and a busy machine can take long to get there.
        deadline = time.monotonic() + 90
        while not any(line["key_id"] == "streamer" for line in _audit_lines(caplog)) and time.monotonic() < deadline:
            time.sleep(0.05)
    line = next(line for line in _audit_lines(caplog) if line["key_id"] == "streamer")
    assert line["status"] == 499
    assert 3 <= line["completion_tokens"] < 250
    key = next(key for key in server["state"].keys.keys if key.id == "streamer")
    assert sum(spend.tokens for spend in key.tokens) == line["prompt_tokens"] + line["completion_tokens"]


def test_an_abandoned_whole_answer_stops_decoding_and_is_audited_and_charged(server, caplog, monkeypatch):
    from domaintune.serving import batching

    add, decoded = batching.Row.add, []

    def slow_add(self, token):  # 250 tokens would take 5 s: the client gives up long before
        time.sleep(0.02)
        decoded.append(token)
        add(self, token)

    monkeypatch.setattr(batching.Row, "add", slow_add)
    with caplog.at_level(logging.INFO, logger="domaintune.audit"):
        body = {"model": "base", "prompt": "Tell me a long story", "max_tokens": 250}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server["url"] + "/v1/completions", headers=_headers("leaver"), json=body, timeout=1.0)
        deadline = time.monotonic() + 90
        while not any(line["key_id"] == "leaver" for line in _audit_lines(caplog)) and time.monotonic() < deadline:
            time.sleep(0.05)
    line = next(line for line in _audit_lines(caplog) if line["key_id"] == "leaver")
    assert line["status"] == 499 and 1 <= line["completion_tokens"] < 250
    time.sleep(0.5)  # the row leaves the batch at its next step
    settled = len(decoded)
    time.sleep(1.0)
    assert len(decoded) == settled < 250
    key = next(key for key in server["state"].keys.keys if key.id == "leaver")
    assert sum(spend.tokens for spend in key.tokens) == line["prompt_tokens"] + line["completion_tokens"]


# 5. health and metrics: no names without a key, metrics only for an admin key
def test_health_without_a_valid_key_says_only_ok(server):
    assert httpx.get(server["url"] + "/health").json() == {"status": "ok"}
    assert httpx.get(server["url"] + "/health", headers={"Authorization": "Bearer sk-wrong"}).json() == {"status": "ok"}
    assert httpx.get(server["url"] + "/health", headers=_headers("scoped")).json() == {"status": "ok", "models": ["base"]}


def test_metrics_need_an_admin_key(server):
    _assert_openai_error(httpx.get(server["url"] + "/metrics", headers=_headers("scoped")), 403)
    assert httpx.get(server["url"] + "/metrics", headers=_headers("ops")).status_code == 200


# 6. the keys file fails closed
@pytest.mark.parametrize("entry, message", [
    ("models: []", "models"),
    ("models: legal", "models"),
    ("models: [legal, 3]", "models"),
    ("", "models"),
    ("models: ['*']\n    admin: yes please", "admin"),
    ("models: ['*']\n    modles: [legal]", "modles"),
])
def test_a_missing_or_malformed_scope_is_an_error_naming_the_line(tmp_path, entry, message):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"keys:\n  - id: fine\n    key: sk-1\n    models: ['*']\n  - id: broken\n    key: sk-2\n    {entry}\n")
    with pytest.raises(DomaintuneError, match=message) as caught:
        load_keys(keys_file, environ={})
    assert "line 5" in str(caught.value) and "broken" in str(caught.value)


def test_json_keys_files_name_the_entry_and_star_means_every_model(tmp_path):
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"id": "all", "key": "sk-1", "models": ["*"]}, {"id": "none", "key": "sk-2", "models": []}]))
    with pytest.raises(DomaintuneError, match=r"entry 2 .*'none'.*models"):
        load_keys(keys_file, environ={})
    keys_file.write_text(json.dumps([{"id": "all", "key": "sk-1", "models": ["*"], "admin": True},
                                     {"id": "one", "key": "sk-2", "models": ["legal"]}]))
    every, one = load_keys(keys_file, environ={})
    assert every.allows("anything") and every.admin
    assert one.allows("legal") and not one.allows("l") and not one.admin


# 7. every error in OpenAI's shape, a bad content part a 400 naming it
def test_a_content_part_that_is_not_text_is_400_naming_the_field(server):
    bad = {"model": "base", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    _assert_openai_error(_post(server, "/v1/chat/completions", "ops", bad), 400, "messages.0.content.0.text")
    image = {**bad, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    _assert_openai_error(_post(server, "/v1/chat/completions", "ops", image), 400, "messages.0.content.0.type")


def test_unknown_paths_and_methods_answer_in_openai_shape(server):
    _assert_openai_error(httpx.get(server["url"] + "/nowhere"), 404)
    _assert_openai_error(httpx.get(server["url"] + "/v1/chat/completions", headers=_headers("ops")), 405)


def test_a_refused_host_name_is_400_in_openai_shape():
    from fastapi.testclient import TestClient

    from domaintune.serving.app import create_app
    from domaintune.serving.auth import KeyStore
    from domaintune.serving.settings import ServeSettings
    from domaintune.serving.sources import Served

    with TestClient(create_app(Served(), ServeSettings(), KeyStore([])), base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
        _assert_openai_error(client.get("/health", headers={"Host": "attacker.example"}), 400)


def test_requests_over_the_concurrency_limit_are_503_in_openai_shape():
    from domaintune.serving.middleware import ConcurrencyLimit

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def call(app) -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        await app({"type": "http", "headers": []}, receive, send)
        return sent

    async def scenario():
        limited = ConcurrencyLimit(slow_app, limit=1)
        first = asyncio.create_task(call(limited))
        await asyncio.sleep(0)
        refused = await call(limited)
        release.set()
        return refused, await first

    refused, answered = asyncio.run(scenario())
    assert refused[0]["status"] == 503 and answered[0]["status"] == 200
    assert set(json.loads(refused[1]["body"])["error"]) == OPENAI_ERROR_FIELDS


# 8. --log-content --redact-pii redacts prompts too
def test_redaction_covers_logged_prompts(server, caplog, monkeypatch):
    from domaintune.config import PiiConfig
    from domaintune.data.pii import PiiScanner

    state = server["state"]
    monkeypatch.setattr(state.settings, "log_content", True)
    monkeypatch.setattr(state, "scanner", PiiScanner(PiiConfig()))
    with caplog.at_level(logging.INFO, logger="domaintune.audit"):
        chat = {"model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "mail jane.doe@example.com now"}]}
        assert _post(server, "/v1/chat/completions", "ops", chat).status_code == 200
        completion = {"model": "base", "max_tokens": 2, "prompt": ["call john.roe@example.org", "fine"]}
        assert _post(server, "/v1/completions", "ops", completion).status_code == 200
    prompts = [line["prompt"] for line in _audit_lines(caplog) if "prompt" in line]
    assert len(prompts) == 2 and all("[EMAIL]" in prompt for prompt in prompts)
    assert "jane.doe" not in caplog.text and "john.roe" not in caplog.text


# The campaign, small: `domaintune serve` in a subprocess, a load phase and an abuse phase.
def test_load_and_abuse_campaign_small(tiny_model_dir, tmp_path):
    script = Path(__file__).parents[1] / "bench" / "serve_load.py"
    result = subprocess.run(
        [sys.executable, str(script), "--model-dir", str(tiny_model_dir), "--requests", "100", "--concurrency", "8",
         "--max-tokens", "2", "--abuse-paths", "1000", "--health-p95-ms", "inf", "--timeout", "240",
         "--output", str(tmp_path / "load.json")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "load.json").read_text())
    assert report["status_counts"] == {"200": 100}
    assert report["latency_s"]["p50"] <= report["latency_s"]["p99"]
    abuse = report["abuse"]
    assert all(check["passed"] for check in abuse["hostile"].values()), abuse["hostile"]
    assert abuse["random_paths"]["status_counts"] == {"404": 1000}
    assert abuse["server_errors"] == 0 and abuse["connection_errors"] == 0
    assert abuse["rss_growth_mb"] < 50
