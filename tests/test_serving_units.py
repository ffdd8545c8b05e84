"""Serving pieces without a server: keys, limits, what gets served, the vLLM hand-over, the CLI's refusals."""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading

import pytest
from typer.testing import CliRunner

from domaintune.cli import app
from domaintune.core.errors import DomaintuneError
from domaintune.serving.auth import KeyStore, load_keys
from domaintune.serving.errors import ApiError
from domaintune.serving.settings import ServeSettings
from domaintune.serving.sources import resolve_sources
from domaintune.serving.vllm import check_vllm, vllm_command, vllm_environment


def test_keys_are_kept_hashed_and_checked(tmp_path):
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"id": "a", "sha256": hashlib.sha256(b"sk-aaa").hexdigest(), "models": ["m"]}]))
    store = KeyStore(load_keys(keys_file, environ={"DOMAINTUNE_API_KEYS": "ops:sk-ops, sk-plain"}))
    assert [key.id for key in store.keys] == ["a", "ops", "env-1"]
    assert all("sk-" not in repr(key) for key in store.keys)  # only digests are kept
    assert store.authenticate("Bearer sk-aaa").id == "a" and store.authenticate("Bearer sk-plain").id == "env-1"
    with pytest.raises(ApiError) as caught:
        store.authenticate("Bearer sk-aa")
    assert caught.value.status == 401


def test_token_limit_refuses_until_the_window_passes():
    key = load_keys(environ={"DOMAINTUNE_API_KEYS": "t:sk-t"})[0]
    store = KeyStore([key])
    key.tokens_per_minute = 100
    store.admit(key, now=0)
    store.spend(key, 150, now=1)
    with pytest.raises(ApiError) as caught:
        store.admit(key, now=30)
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "31"
    store.admit(key, now=61.5)  # the spend left the window


@pytest.mark.parametrize("entry, message", [
    ({"id": "x"}, "exactly one of key or sha256"),
    ({"id": "x", "sha256": "abc"}, "64 hex digits"),
    ({"id": "x", "key": "k", "models": ["*"], "requests_per_minute": 0}, "requests_per_minute"),
])
def test_bad_keys_file_entries_are_named(tmp_path, entry, message):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(DomaintuneError, match=message):
        load_keys(keys_file, environ={})


def test_refuses_a_public_address_without_keys(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("DOMAINTUNE_API_KEYS", raising=False)
    result = CliRunner().invoke(app, ["serve", str(tiny_model_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--host" in result.output and "without API keys" in result.output and "Traceback" not in result.output


def test_adapters_dir_and_names(tiny_model_dir, tmp_path):
    for name in ("legal", "medical"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": 32, "base_model_name_or_path": "x"}))
    served = resolve_sources([f"base={tiny_model_dir}"], adapters_dir=str(tmp_path))
    assert served.chat == ("base", str(tiny_model_dir)) and set(served.adapters) == {"legal", "medical"}
    with pytest.raises(DomaintuneError, match="--adapter: .* is not a peft adapter"):
        resolve_sources([str(tiny_model_dir)], adapters=[f"x={tiny_model_dir}"])


def test_vllm_command_line(tiny_model_dir, tmp_path):
    (tmp_path / "legal").mkdir()
    (tmp_path / "legal" / "adapter_config.json").write_text(json.dumps({"r": 32}))
    served = resolve_sources([f"base={tiny_model_dir}"], adapters=[f"legal={tmp_path / 'legal'}"])
    settings = ServeSettings(port=9001, max_context=2048)
    command = vllm_command(served, settings, python="/venvs/vllm/bin/python")
    assert command[:3] == ["/venvs/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(command)
    assert f"--model {tiny_model_dir} --served-model-name base --host 127.0.0.1 --port 9001" in joined
    assert f"--enable-lora --max-loras 1 --max-lora-rank 32 --lora-modules legal={tmp_path / 'legal'}" in joined
    assert "--max-model-len 2048" in joined
    assert command[command.index("--allowed-origins") + 1] == "[]"  # vLLM's own default is every origin
    environment = vllm_environment(settings, environ={"DOMAINTUNE_API_KEYS": "ops:sk-secret"})
    assert environment["VLLM_API_KEY"] == "sk-secret" and "sk-secret" not in joined
    # No Host check in vLLM: keyless, a web page could reach it through DNS rebinding, so a key is required.
    with pytest.raises(DomaintuneError, match="DOMAINTUNE_API_KEYS.*even on 127.0.0.1"):
        vllm_environment(settings, environ={})


def test_vllm_missing_is_a_clear_message(tmp_path, tiny_model_dir):
    with pytest.raises(DomaintuneError, match="--vllm-python: .* can't import vllm; install vLLM"):
        check_vllm(sys.executable)  # this environment has no vllm
    with pytest.raises(DomaintuneError, match="--vllm-python: .* does not exist"):
        check_vllm(str(tmp_path / "python"))
    result = CliRunner().invoke(app, ["serve", str(tiny_model_dir), "--engine", "vllm"])
    assert result.exit_code == 2 and "vLLM is not installed" in result.output


def test_a_run_directory_serves_its_adapter_on_its_base(tiny_recipe, tiny_model_dir):
    import shutil

    from domaintune.config import validate_recipe
    from domaintune.storage.rundir import RunDir

    run = RunDir.create(validate_recipe(tiny_recipe))
    run.model.mkdir()
    (run.model / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    served = resolve_sources([str(run.root)])
    assert served.chat == (tiny_model_dir.name, str(tiny_model_dir)) and served.adapters == {"tiny": str(run.model)}
    shutil.copytree(tiny_model_dir, run.export / "merged")  # once exported, the merged model is served instead
    assert resolve_sources([str(run.root)]).chat == ("tiny", str(run.export / "merged")) and not resolve_sources([str(run.root)]).adapters


def test_token_classifier_labels_each_word_piece_with_offsets(tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from domaintune.models.registry import resolve_model_path
    from domaintune.serving.encoders import Classifier

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, id2label={0: "O", 1: "B-ORG"}, label2id={"O": 0, "B-ORG": 1})
    torch.manual_seed(0)
    BertForTokenClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    results, tokens = Classifier(str(tmp_path)).classify(["Acme Bank lends", "hi"])
    pieces = results[0]["tokens"]
    # Word pieces as spans of the original text; no [CLS], [SEP] or padding.
    assert "".join(piece["text"] for piece in pieces) == "AcmeBanklends"
    assert all("Acme Bank lends"[piece["start"]:piece["end"]] == piece["text"] for piece in pieces)
    assert {piece["label"] for piece in pieces} <= {"O", "B-ORG"} and [p["text"] for p in results[1]["tokens"]] == ["hi"]
    assert tokens == sum(len(ids) for ids in tokenizer(["Acme Bank lends", "hi"])["input_ids"])


class _FakeWork:
    def __init__(self, events):
        import asyncio

        self.cancelled = False
        self.events = asyncio.Queue()
        for event in events:
            self.events.put_nowait(event)


class _Connected:
    """A request whose client stays (or leaves after `polls` checks)."""

    def __init__(self, polls: int | None = None):
        self.polls = polls

    async def is_disconnected(self) -> bool:
        if self.polls is None:
            return False
        self.polls -= 1
        return self.polls < 0


def test_pii_redaction_covers_whole_and_streamed_answers():
    import asyncio
    import types

    from domaintune.config import PiiConfig
    from domaintune.data.pii import PiiScanner
    from domaintune.serving import generation_replies
    from domaintune.serving.accounting import Record
    from domaintune.serving.batching import Event
    from domaintune.serving.prometheus import Metrics
    from domaintune.serving.schemas import ChatRequest

    scanner = PiiScanner(PiiConfig())
    state = types.SimpleNamespace(scanner=scanner, metrics=Metrics(), redact=lambda text: scanner.redact(text)[0],
                                  keys=KeyStore([]), settings=ServeSettings())
    events = [Event(text="write to jane.doe@"), Event(text="example.com today"), Event(finish_reason="stop", completion_tokens=6)]
    record = Record("/v1/chat/completions")
    [(text, reason)] = asyncio.run(generation_replies.collect_all(state, _Connected(), record, [_FakeWork(events)]))
    assert text == "write to [EMAIL] today" and (reason, record.completion_tokens) == ("stop", 6)

    async def stream():
        body = ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
        record = Record("/v1/chat/completions")
        return [chunk async for chunk in generation_replies._stream(state, body, record, _FakeWork(events), "chat.completion")]

    chunks = asyncio.run(stream())
    contents = [json.loads(chunk[6:])["choices"][0]["delta"].get("content") for chunk in chunks[:-1]]
    assert "write to [EMAIL] today" in contents and not any("jane" in (content or "") for content in contents)
    assert chunks[-1] == "data: [DONE]\n\n"


def _greedy_alone(model, tokenizer, prompt_ids: list[int], tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def test_rows_joining_a_running_batch_keep_their_greedy_output(tiny_model_dir):
    import asyncio

    import torch

    from domaintune.serving.batching import GenerationRequest, Row
    from domaintune.serving.engine import Batch, Generator

    generator = Generator("base", str(tiny_model_dir), {}, dtype="float32")
    loop = asyncio.new_event_loop()
    try:
        prompts = [generator.tokenizer(text)["input_ids"] for text in
                   ("A long first prompt about a loan agreement and its many clauses", "Short", "Medium sized prompt here")]
        requests = [GenerationRequest(model="base", prompt_ids=ids, max_tokens=tokens, loop=loop, events=asyncio.Queue())
                    for ids, tokens in zip(prompts, (12, 5, 9))]
        batch = Batch(generator, "base")
        rows = [Row(request, generator.tokenizer, generator.eos_ids) for request in requests]
        batch.join(rows[:1])
        for _ in range(3):
            batch.step()
        abandoned = Row(GenerationRequest(model="base", prompt_ids=prompts[1], max_tokens=50, loop=loop,
                                          events=asyncio.Queue()), generator.tokenizer, generator.eos_ids)
        batch.join([*rows[1:], abandoned])  # shorter prompts join a batch whose cache is already longer
        batch.step()
        abandoned.request.cancelled = True  # its client went away
        while batch.rows:
            batch.step()
        assert len(abandoned.tokens) == 2
        batch.close()
        loop.run_until_complete(asyncio.sleep(0))  # deliver the events the rows sent
        model = generator.pool.model
        for row, ids in zip(rows, prompts):
            expected = _greedy_alone(model, generator.tokenizer, ids, row.request.max_tokens)
            assert row.tokens == expected[:len(row.tokens)]
            assert len(row.tokens) == row.request.max_tokens or expected[len(row.tokens)] in generator.eos_ids
            events = []
            while not row.request.events.empty():
                events.append(row.request.events.get_nowait())
            assert "".join(event.text for event in events) == generator.tokenizer.decode(row.tokens, skip_special_tokens=True)
            assert events[-1].finish_reason in {"length", "stop"}
    finally:
        generator.close()
        loop.close()
    assert torch.is_grad_enabled()  # the worker's no-grad setting stays in its own thread


def test_sampling_with_tiny_top_p_is_the_most_likely_token():
    import torch

    from domaintune.serving.batching import GenerationRequest
    from domaintune.serving.engine import choose_tokens

    logits = torch.tensor([[0.1, 3.0, 0.2], [2.0, 0.1, 0.3]])
    requests = [GenerationRequest(model="m", prompt_ids=[1], max_tokens=1, temperature=0.7, top_p=1e-6),
                GenerationRequest(model="m", prompt_ids=[1], max_tokens=1)]
    assert choose_tokens(logits, requests).tolist() == [[1], [0]]


def test_a_keyless_loopback_server_refuses_other_host_names():
    from fastapi.testclient import TestClient

    from domaintune.serving.app import create_app

    app = create_app(resolve_sources(["minilm-l6"]), ServeSettings(), KeyStore([]))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
        reply = client.post("/v1/embeddings", json={"model": "minilm-l6", "input": "no key needed here"})
        assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 384


def test_a_broken_adapter_fails_its_requests_not_the_worker(tiny_model_dir, tmp_path):
    import asyncio

    from domaintune.serving.batching import GenerationRequest
    from domaintune.serving.engine import Generator

    (tmp_path / "adapter_config.json").write_text("{not json")
    generator = Generator("base", str(tiny_model_dir), {"broken": str(tmp_path)}, dtype="float32")

    async def ask(model: str):
        request = GenerationRequest(model=model, prompt_ids=generator.tokenizer("Hi there")["input_ids"], max_tokens=2)
        generator.submit([request])
        events = [await request.events.get()]
        while not events[-1].finish_reason:
            events.append(await request.events.get())
        return events[-1]

    try:
        assert asyncio.run(ask("broken")).error is not None
        assert asyncio.run(ask("base")).finish_reason in {"length", "stop"}  # the worker is still serving
    finally:
        generator.close()


def test_a_stream_the_client_left_is_closed_at_once():
    """A dropped stream's `finally` (its audit line and charge) runs when the response ends, not at garbage collection."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from domaintune.core.streaming import ClosingStreamingResponse

    closed = []

    async def body():
        try:
            for index in range(100):
                yield f"data: {index}\n\n"
        finally:
            closed.append(True)

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            raise OSError("the client went away")

    async def receive():
        return {"type": "http.disconnect"}

    async def scenario():
        response = ClosingStreamingResponse(body(), media_type="text/event-stream")
        with pytest.raises(ClientDisconnect):
            await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
        return list(closed)  # the response (and so the generator) is still referenced here

    assert asyncio.run(scenario()) == [True]


def _whole_answers(work, client, record):
    import asyncio
    import types

    from domaintune.serving import generation_replies

    state = types.SimpleNamespace(scanner=None, redact=lambda text: text)
    return asyncio.run(generation_replies.collect_all(state, client, record, work))


def test_whole_answers_the_client_left_stop_decoding_and_are_charged_what_was_decoded():
    from domaintune.serving.accounting import Record
    from domaintune.serving.batching import Event
    from domaintune.serving.errors import ApiError

    record = Record("/v1/completions")
    # Two prompts still decoding (no finish event yet), 3 and 5 tokens in.
    work = [_FakeWork([Event(text="a b c", completion_tokens=3)]), _FakeWork([Event(text="d", completion_tokens=5)])]
    with pytest.raises(ApiError) as raised:
        _whole_answers(work, _Connected(polls=1), record)
    assert raised.value.status == 499 and all(item.cancelled for item in work) and record.completion_tokens == 8


def test_one_failed_prompt_cancels_the_others_of_its_request():
    from domaintune.serving.accounting import Record
    from domaintune.serving.batching import Event
    from domaintune.serving.errors import ApiError

    failing = _FakeWork([Event(finish_reason="error", error=RuntimeError("engine died"))])
    running = _FakeWork([Event(text="x", completion_tokens=1)])
    with pytest.raises(ApiError) as raised:
        _whole_answers([running, failing], _Connected(), Record("/v1/completions"))
    assert raised.value.status == 500 and running.cancelled


def test_a_stream_closed_right_after_its_role_chunk_cancels_its_row(monkeypatch):
    import asyncio
    import types

    from domaintune.serving import generation_replies
    from domaintune.serving.accounting import Record
    from domaintune.serving.schemas import ChatRequest

    statuses = []
    monkeypatch.setattr(generation_replies, "finish", lambda state, record, status: statuses.append(status))
    state = types.SimpleNamespace(scanner=None, redact=lambda text: text)
    work = _FakeWork([])
    body = ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], stream=True)

    async def drop_after_first_chunk():
        stream = generation_replies._stream(state, body, Record("/v1/chat/completions"), work, "chat.completion")
        assert '"role": "assistant"' in await stream.__anext__()
        await stream.aclose()  # what ClosingStreamingResponse does when the client has gone at this point

    asyncio.run(drop_after_first_chunk())
    assert work.cancelled and statuses == [499]


def test_auto_sends_a_request_into_an_idle_server_to_one_engine_and_concurrent_ones_to_the_other():
    from domaintune.serving.batching import Event, GenerationRequest
    from domaintune.serving.load_router import LoadRouter

    class Recording:
        def __init__(self, engine: str):
            self.engine = {"engine": engine, "compute_type": "float32"}
            self.received: list[GenerationRequest] = []
            self.tokenizer, self.context_length, self.models, self.queued = None, 2048, ["base"], 0
            self.making_way = threading.Event()

        def submit(self, requests):
            self.received.append(requests)

        def make_way(self):
            self.making_way.set()

    def request():
        item = GenerationRequest(model="base", prompt_ids=[1], max_tokens=4, events=asyncio.Queue())
        item.loop = type("Loop", (), {"call_soon_threadsafe": staticmethod(lambda call, event: call(event))})()
        return item

    alone, together = Recording("ctranslate2"), Recording("torch")
    router = LoadRouter(alone, together)
    first, also_first, second, third = request(), request(), request(), request()
    router.submit([first, also_first])  # nothing in progress: a request's prompts stay together
    assert not alone.making_way.is_set()
    router.submit([second])  # first still in progress: ctranslate2 hands it to torch
    assert alone.making_way.is_set() and alone.successor is together
    also_first.cancelled = second.cancelled = True  # their clients went away
    router.submit([third])  # first still in progress
    assert alone.received == [[first, also_first]] and together.received == [[second], [third]]
    first.send(Event(finish_reason="stop"))
    assert router.engine_for_next() is together  # third is still being answered
    third.send(Event(finish_reason="length"))
    assert router.engine_for_next() is alone  # idle again
    router.submit([request()])
    assert not alone.making_way.is_set()  # a signal left from before is dropped
    assert router.engine == {"engine": "ctranslate2 (one request at a time) + torch (concurrent)",
                             "compute_type": "float32 + float32"}


def test_a_request_ctranslate2_began_is_finished_by_torch_with_the_same_greedy_answer(tiny_model_dir):
    from domaintune.serving.batching import GenerationRequest
    from domaintune.serving.engine_choice import text_engine

    router = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(dtype="float32", compute_type="float32"))

    async def answer(make_way: bool):
        request = GenerationRequest(model="base", prompt_ids=router.tokenizer("Where is the office?")["input_ids"],
                                    max_tokens=24)
        if make_way:  # as when another request arrives: ctranslate2 hands the row over at its first token
            router.alone.make_way()  # first, while the new engine is surely idle (not ending a batch)
            router.alone.submit([request])
        else:
            assert router.engine_for_next() is router.alone
            router.submit([request])  # into an idle server: ctranslate2 alone, and the signal is dropped
        events = [await request.events.get()]
        while not events[-1].finish_reason:
            events.append(await request.events.get())
        return request, "".join(event.text for event in events), events[-1]

    try:
        handed, handed_text, handed_end = asyncio.run(answer(make_way=True))
        alone, alone_text, alone_end = asyncio.run(answer(make_way=False))
    finally:
        router.close()
    assert alone.carried is None and len(handed.carried.tokens) == 24  # begun on one engine, ended on the other
    assert alone_end.finish_reason == handed_end.finish_reason == "length"
    assert handed_text == alone_text and handed_end.completion_tokens == alone_end.completion_tokens == 24
    assert not router.alone.making_way.is_set()


def test_a_failed_generation_logs_its_own_error_even_outside_the_handler(caplog):
    """Engines report errors they did not catch themselves (OpenVINO's child sends them over a pipe)."""
    from domaintune.serving.batching import BatchingWorker, GenerationRequest

    async def fail() -> GenerationRequest:
        request = GenerationRequest(model="base", prompt_ids=[1, 2], max_tokens=4, loop=asyncio.get_running_loop(),
                                    events=asyncio.Queue())
        BatchingWorker._fail([request, request], RuntimeError("the pipeline stopped"))
        await asyncio.sleep(0)  # the events are handed over with call_soon_threadsafe
        return request

    with caplog.at_level("ERROR", logger="domaintune.serving"):
        request = asyncio.run(fail())
    assert "RuntimeError: the pipeline stopped" in caplog.text and "NoneType: None" not in caplog.text
    event = request.events.get_nowait()
    assert event.finish_reason == "error" and request.events.empty()  # one event per request, not per mention


def test_the_openvino_process_never_unloads_the_adapter_it_was_just_asked_for(monkeypatch):
    """One adapter loaded at most; adapter A still holds a row whose cancel has just arrived when B is asked for."""
    import multiprocessing
    import sys
    import threading
    import types

    from domaintune.models import openvino_pipelines

    class Handle:
        def __init__(self):
            self.status = 0  # running

        def cancel(self):
            self.status = 2

        def can_read(self):
            return True

        def read(self):
            return {0: types.SimpleNamespace(generated_ids=[7])}

        def get_status(self):
            return self.status

    class Pipeline:
        def add_request(self, request_id, prompt, config):
            return Handle()

        def step(self):
            pass

    genai = types.SimpleNamespace(GenerationStatus=types.SimpleNamespace(RUNNING=0, IGNORED=1),
                                  GenerationConfig=types.SimpleNamespace)
    monkeypatch.setitem(sys.modules, "openvino_genai", genai)
    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(Tensor=lambda array: array))
    monkeypatch.setattr(openvino_pipelines, "continuous_batching_pipeline", lambda *args: Pipeline())
    parent, child = multiprocessing.Pipe()
    files = {"base": "base.gguf", "A": "a.gguf", "B": "b.gguf"}
    worker = threading.Thread(target=openvino_pipelines.serve_pipelines, args=(child, files, 1, 4, 1), daemon=True)
    worker.start()
    try:
        assert parent.recv() == ("ready",)
        parent.send(("add", 0, "A", [1, 2], {}))
        assert parent.recv()[0] == "step"
        parent.send(("cancel", 0))
        parent.send(("add", 1, "B", [1, 2], {}))
        replies = []
        while parent.poll(2) and not any(update[0] == 1 for reply in replies for update in reply[1]):
            replies.append(parent.recv())
            assert replies[-1][0] == "step", replies[-1]  # not ("error", [1], "'B'")
        assert any(update[0] == 1 for reply in replies for update in reply[1])  # B's row stepped
    finally:
        parent.send(None)
        worker.join(5)
