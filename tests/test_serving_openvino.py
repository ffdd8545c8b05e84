"""The server's OpenVINO engine on a tiny model: its greedy answers against torch's, adapters, stop strings,
cancelled streams, the conversion cache and the fall-backs when it can't load a model."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch
from rich.console import Console

from domaintune.models.conversions import LEASE_PREFIX
from domaintune.serving.batching import GenerationRequest
from domaintune.serving.engine_choice import text_engine
from domaintune.serving.settings import ServeSettings

pytest.importorskip("openvino_genai")
PROMPTS = ["Where is the office?", "What is the refund policy?", "Name a colour."]


def _lora(base_dir: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    # Random A and B and a large scale, so the adapter visibly changes the answers.
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(folder)
    return folder


def _answers(engine, model: str, prompts: list[str], **options) -> list[tuple[str, str, int]]:
    """(text, finish_reason, completion_tokens) of each prompt, sent together."""
    async def run():
        requests = [GenerationRequest(model=model, prompt_ids=engine.tokenizer(prompt)["input_ids"], **options)
                    for prompt in prompts]
        engine.submit(requests)
        answers = []
        for request in requests:
            events = [await request.events.get()]
            while not events[-1].finish_reason:
                events.append(await request.events.get())
            assert events[-1].error is None
            answers.append(("".join(event.text for event in events), events[-1].finish_reason,
                            events[-1].completion_tokens))
        return answers

    return asyncio.run(run())


def _torch_greedy(model_dir: Path, prompts: list[str], max_tokens: int, adapter: Path | None = None) -> list[str]:
    """torch fp32 greedy answers with the weights rounded to float16, as the engine's f16 GGUF holds them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.half().float().eval()
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        output = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, min_new_tokens=max_tokens)
        answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


@pytest.fixture(scope="module")
def openvino_engine(tiny_model_dir, tmp_path_factory):
    adapter = _lora(tiny_model_dir, tmp_path_factory.mktemp("openvino") / "alpha")
    engine = text_engine(("base", str(tiny_model_dir)), {"alpha": str(adapter)},
                         ServeSettings(engine="openvino", compute_type="float16", max_loaded_adapters=1))
    yield engine, adapter
    engine.close()


def test_float16_greedy_answers_equal_torchs_for_the_base_and_an_adapter(openvino_engine, tiny_model_dir):
    from domaintune.serving.openvino_engine import OpenVINOEngine

    engine, adapter = openvino_engine
    assert isinstance(engine, OpenVINOEngine) and engine.engine == {"engine": "openvino", "compute_type": "float16"}
    assert engine.models == ["base", "alpha"]
    for model, adapter_dir in (("base", None), ("alpha", adapter), ("base", None)):
        answers = _answers(engine, model, PROMPTS, max_tokens=12)
        # The tiny random model never says its end token in 12 tokens, so every row runs to its max_tokens.
        assert [(reason, tokens) for _, reason, tokens in answers] == [("length", 12)] * len(PROMPTS)
        assert [text for text, _, _ in answers] == _torch_greedy(tiny_model_dir, PROMPTS, 12, adapter_dir)


def test_stop_strings_end_a_row_and_the_others_go_on(openvino_engine):
    engine, _ = openvino_engine
    (full, _, _), = _answers(engine, "base", PROMPTS[:1], max_tokens=12)
    stop = full[len(full) // 2:][:3]  # a piece from the middle of the greedy answer
    stopped, other = _answers(engine, "base", PROMPTS[:2], max_tokens=12, stop=[stop])
    assert stopped[0] == full[: full.index(stop)] and stopped[1] == "stop"
    assert other[1] in ("length", "stop")


def test_a_cancelled_request_leaves_and_the_engine_keeps_answering(openvino_engine):
    engine, _ = openvino_engine

    async def run():
        request = GenerationRequest(model="base", prompt_ids=engine.tokenizer(PROMPTS[0])["input_ids"], max_tokens=200)
        engine.submit([request])
        await request.events.get()  # it is being answered
        request.cancelled = True
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert _answers(engine, "base", PROMPTS[1:2], max_tokens=5)[0][1:] == ("length", 5)


def test_sampling_follows_each_requests_temperature(openvino_engine):
    engine, _ = openvino_engine
    greedy = _answers(engine, "base", PROMPTS[:1] * 2, max_tokens=16)
    sampled = _answers(engine, "base", PROMPTS[:1] * 4, max_tokens=16, temperature=5.0)
    assert greedy[0] == greedy[1]
    assert len({text for text, _, _ in sampled}) > 1  # at temperature 5 the four samples differ


def test_a_second_start_reuses_the_conversion(tiny_model_dir, capsys):
    settings = ServeSettings(engine="openvino", compute_type="float16")
    for _ in range(2):
        engine = text_engine(("base", str(tiny_model_dir)), {}, settings, console=Console(stderr=True))
        engine.close()
    assert capsys.readouterr().err.count("Converting the model for openvino") <= 1  # none if a test before converted
    # Held against the cache's eviction while this process lives.
    assert (engine.files["base"].parent / f"{LEASE_PREFIX}{os.getpid()}").exists()


def test_a_model_openvino_cant_load_falls_back_with_a_notice(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from domaintune.models.gguf_converter import CONVERTER_ENV
    from domaintune.serving.engine import Generator
    from domaintune.serving.load_router import LoadRouter

    monkeypatch.setenv("DOMAINTUNE_CACHE", str(tmp_path / "cache"))  # no conversion from an earlier test
    monkeypatch.setenv(CONVERTER_ENV, "/nowhere")
    console = Console(stderr=True, width=300)
    named = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(engine="openvino", dtype="float32"), console=console)
    named.close()
    assert isinstance(named, Generator)
    assert "Generating with torch: OpenVINO can't load this model (OpenVINO engine: llama.cpp's converter is not " \
           "installed" in capsys.readouterr().err
    auto = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(dtype="float32"), console=console)
    auto.close()
    assert isinstance(auto, LoadRouter)  # auto goes on to CTranslate2 and torch
    assert "OpenVINO can't load this model" in capsys.readouterr().err


def test_auto_takes_openvino_only_for_a_compute_type_it_runs(tiny_model_dir):
    from domaintune.core.errors import DomaintuneError
    from domaintune.serving.load_router import LoadRouter
    from domaintune.serving.openvino_engine import OpenVINOEngine

    engine = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(dtype="float32"))
    engine.close()
    assert isinstance(engine, OpenVINOEngine) and engine.engine["compute_type"] in ("int8", "float16")
    router = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(dtype="float32", compute_type="float32"))
    router.close()
    assert isinstance(router, LoadRouter)
    with pytest.raises(DomaintuneError, match="--compute-type float32: the OpenVINO engine takes auto, int8, float16"):
        text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(engine="openvino", compute_type="float32"))


def test_auto_serves_on_torch_where_there_is_a_gpu(tiny_model_dir, monkeypatch):
    from domaintune.serving import engine_choice
    from domaintune.serving.engine import Generator

    monkeypatch.setattr(engine_choice, "inference_device", lambda: "cuda")
    engine = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(dtype="float32"))
    engine.close()
    assert isinstance(engine, Generator)


def test_requests_fail_with_an_error_rather_than_hang_when_the_openvino_process_dies(tiny_model_dir):
    engine = text_engine(("base", str(tiny_model_dir)), {}, ServeSettings(engine="openvino", compute_type="float16"))
    engine.pipelines.process.kill()
    engine.pipelines.process.join(10)

    async def run():
        request = GenerationRequest(model="base", prompt_ids=engine.tokenizer(PROMPTS[0])["input_ids"], max_tokens=4)
        engine.submit([request])
        return await asyncio.wait_for(request.events.get(), timeout=30)

    try:
        event = asyncio.run(run())
        assert not engine.alive  # so /health says 503
    finally:
        engine.close()
    assert event.finish_reason == "error" and event.error is not None


def test_health_says_503_once_the_engine_has_stopped(tiny_model_dir):
    from starlette.testclient import TestClient

    from domaintune.serving.server import build_app
    from domaintune.serving.sources import resolve_sources

    app = build_app(resolve_sources([f"base={tiny_model_dir}"]), ServeSettings(engine="openvino", compute_type="float16"))
    engine = app.state.domaintune.generator
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            assert client.get("/health").json()["status"] == "ok"
            engine.pipelines.process.kill()
            engine.pipelines.process.join(10)
            reply = client.get("/health")
            assert reply.status_code == 503 and reply.json()["status"] == "unavailable"
    finally:
        engine.close()


def test_the_openai_client_streams_stops_and_picks_an_adapter_on_openvino(openvino_engine, tiny_model_dir, tmp_path):
    import openai
    from conftest import free_port, live_server

    from domaintune.serving.server import build_app
    from domaintune.serving.sources import resolve_sources

    _, adapter = openvino_engine
    served = resolve_sources([f"base={tiny_model_dir}"], adapters=[f"alpha={adapter}"])
    settings = ServeSettings(port=free_port(), engine="openvino", compute_type="float16", max_tokens=32)
    app = build_app(served, settings)
    with live_server(app, settings.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0)
        assert app.state.domaintune.generator.engine == {"engine": "openvino", "compute_type": "float16"}
        chat = [{"role": "user", "content": PROMPTS[0]}]
        answers = {model: client.chat.completions.create(model=model, messages=chat, max_tokens=10, temperature=0)
                   for model in ("base", "alpha")}
        text = answers["base"].choices[0].message.content
        assert answers["alpha"].choices[0].message.content != text  # the adapter answers differently
        templated = served_prompt(tiny_model_dir, chat)
        assert text == _torch_greedy(tiny_model_dir, [templated], 10)[0]
        assert answers["alpha"].choices[0].message.content == _torch_greedy(tiny_model_dir, [templated], 10, adapter)[0]
        stream = client.chat.completions.create(model="base", messages=chat, max_tokens=10, temperature=0, stream=True)
        chunks = list(stream)
        pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
        assert len(pieces) > 1 and "".join(pieces) == text
        stop = text[len(text) // 2:][:3]
        stopped = client.chat.completions.create(model="base", messages=chat, max_tokens=10, temperature=0, stop=[stop])
        assert stopped.choices[0].message.content == text[: text.index(stop)]
        assert stopped.choices[0].finish_reason == "stop"


def served_prompt(model_dir: Path, chat: list[dict]) -> str:
    """The prompt text the server builds for a chat (its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
