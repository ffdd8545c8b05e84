"""The FastAPI app: OpenAI-compatible routes, errors in OpenAI's shape, keys, limits, metrics, audit log."""
from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from domaintune.serving.auth import ApiKey, KeyStore, check_scope
from domaintune.serving.encoders import Classifier, Embedder
from domaintune.serving.engine import Event, GenerationRequest, Generator
from domaintune.serving.errors import ApiError
from domaintune.serving.metrics import Metrics
from domaintune.serving.settings import ServeSettings, is_loopback
from domaintune.serving.sources import Served

audit_log = logging.getLogger("domaintune.audit")


# Requests: unknown fields are ignored (pydantic's default), as OpenAI clients send ones this server has no use for.
class Message(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts are supported
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class Sampling(BaseModel):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stop: str | list[str] | None = None
    stream_options: dict[str, Any] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions


class TextsRequest(BaseModel):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input



class Record:
    """One request's audit line and metrics, finished when its response (or its stream) ends."""

    def __init__(self, endpoint: str):
        self.start = time.perf_counter()
        self.endpoint = endpoint
        self.key: ApiKey | None = None
        self.model: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.deferred = False  # a stream finishes the record itself
        self.content: dict[str, str] = {}


class State:
    def __init__(self, served: Served, settings: ServeSettings, keys: KeyStore):
        self.settings = settings
        self.keys = keys
        self.metrics = Metrics()
        remote = {"trust_remote_code": settings.trust_remote_code}
        self.generator = (
            Generator(*served.chat, served.adapters, dtype=settings.dtype, max_loaded_adapters=settings.max_loaded_adapters,
                      max_batch_size=settings.max_batch_size, batch_wait_ms=settings.batch_wait_ms, metrics=self.metrics,
                      **remote)
            if served.chat else None
        )
        self.embedders = {name: Embedder(path, **remote) for name, path in served.embeddings.items()}
        self.classifiers = {name: Classifier(path, **remote) for name, path in served.classifiers.items()}
        self.created = int(time.time())
        self.scanner = None
        if settings.redact_pii:
            from domaintune.config import PiiConfig
            from domaintune.data.pii import PiiScanner

            self.scanner = PiiScanner(PiiConfig())

    def names(self) -> list[str]:
        return [*(self.generator.models if self.generator else []), *self.embedders, *self.classifiers]

    def pick(self, models: dict, name: str, key: ApiKey, endpoint: str):
        if name not in models:
            known = name in self.names()
            raise ApiError(400 if known else 404, f"The model '{name}' {'can not be used with ' + endpoint if known else 'does not exist'}.",
                           param="model", code="model_not_supported" if known else "model_not_found")
        check_scope(key, name)
        return models[name]

    def redact(self, text: str) -> str:
        return self.scanner.redact(text)[0] if self.scanner else text


def create_app(served: Served, settings: ServeSettings, keys: KeyStore) -> FastAPI:
    state = State(served, settings, keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if state.generator:
            state.generator.close()

    app = FastAPI(title="domaintune", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.domaintune = state
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if is_loopback(settings.host) and not keys.required:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        # Keyless is safe only for this machine's own clients: refusing other Host names stops a web
        # page from reaching the server through DNS rebinding.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])
    # Inside the `account` middleware (added later, so outer): its receive wrapper would hide the 413.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    _add_handlers(app, state)
    _add_routes(app, state)
    return app


class BodyLimit:
    """413 for a body over the limit: a declared Content-Length before anything is read, a chunked
    body once what was read passes the limit."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        declared_too_large = declared.isdigit() and int(declared) > self.limit
        received = 0

        async def limited():
            nonlocal received
            message = {} if declared_too_large else await receive()
            received += len(message.get("body", b""))
            if declared_too_large or received > self.limit:
                # An HTTPException passes FastAPI's body parsing unchanged; the handler gives it OpenAI's shape.
                raise HTTPException(413, f"Request body is larger than {self.limit} bytes.")
            return message

        await self.app(scope, limited, send)


def _finish(state: State, record: Record, status: int) -> None:
    latency = time.perf_counter() - record.start
    metrics = state.metrics
    metrics.requests.labels(record.endpoint, record.model or "", str(status)).inc()
    metrics.latency.labels(record.endpoint).observe(latency)
    if record.model:
        metrics.tokens.labels(record.model, "prompt").inc(record.prompt_tokens)
        metrics.tokens.labels(record.model, "completion").inc(record.completion_tokens)
    if record.key is not None:
        state.keys.spend(record.key, record.prompt_tokens + record.completion_tokens)
    line = {"time": round(time.time(), 3), "key_id": record.key.id if record.key else None, "endpoint": record.endpoint, "model": record.model,
            "status": status, "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
            "latency_ms": round(latency * 1000, 1)}
    if state.settings.log_content:
        line.update(record.content)
    audit_log.info(json.dumps(line))


def _add_handlers(app: FastAPI, state: State) -> None:
    @app.middleware("http")
    async def account(request: Request, call_next):
        record = request.state.record = Record(request.url.path)
        response = await call_next(request)
        if not record.deferred:
            _finish(state, record, response.status_code)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error_response(state, error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problem = error.errors()[0]
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        if problem.get("type") == "json_invalid":
            return _error_response(state, ApiError(400, "The request body is not valid JSON.", code="invalid_json"))
        # Pydantic reports a union's alternatives as extra path parts ("str", "list[str]"): name the field.
        param = ".".join(part for part in location if not part.startswith(("str", "list[", "int", "function-")))
        return _error_response(state, ApiError(400, f"{param or 'body'}: {problem.get('msg')}", param=param or None,
                                               code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error_response(state, ApiError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logging.getLogger("domaintune.serving").exception("unexpected error")
        record = getattr(request.state, "record", None)
        if record is not None and not record.deferred:
            _finish(state, record, 500)
        return _error_response(state, ApiError(500, "The server had an error while processing the request."))


def _error_response(state: State, error: ApiError) -> JSONResponse:
    state.metrics.errors.labels(error.type).inc()
    return error.response()


def _add_routes(app: FastAPI, state: State) -> None:
    keys = state.keys

    async def authorized(request: Request) -> ApiKey:
        key = keys.authenticate(request.headers.get("authorization"))
        request.state.record.key = key
        keys.admit(key)
        return key

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": state.names()}

    @app.get("/metrics")
    async def metrics(key: ApiKey = Depends(authorized)):
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models(key: ApiKey = Depends(authorized)):
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": state.created, "owned_by": "domaintune"}
            for name in state.names() if key.allows(name)
        ]}

    def generator_for(name: str, key: ApiKey, request: Request) -> Generator:
        generator = state.generator
        state.pick({model: generator for model in generator.models} if generator else {}, name, key, "text generation")
        request.state.record.model = name
        return generator

    def max_tokens_for(requested: int | None, prompt_tokens: int, generator: Generator, param: str) -> int:
        cap = state.settings.max_tokens
        if requested is not None and requested > cap:
            raise ApiError(400, f"max_tokens: {requested} is above this server's limit of {cap}.",
                           param="max_tokens", code="invalid_value")
        context = min(generator.context_length, state.settings.max_context or generator.context_length)
        max_tokens = requested if requested is not None else max(1, min(cap, context - prompt_tokens))
        if prompt_tokens + max_tokens > context:
            raise ApiError(400, f"{param}: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the "
                                f"context limit of {context} tokens.", param=param, code="context_length_exceeded")
        return max_tokens

    def submit(generator: Generator, body: Sampling, prompt_ids: list[int], max_tokens: int) -> GenerationRequest:
        request = GenerationRequest(model=body.model, prompt_ids=prompt_ids, max_tokens=max_tokens,
                                    temperature=body.temperature, top_p=body.top_p, stop=body.stops())
        generator.submit(request)
        return request

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, key: ApiKey = Depends(authorized)):
        generator = generator_for(body.model, key, request)
        tokenizer = generator.tokenizer
        if not tokenizer.chat_template:
            raise ApiError(400, f"messages: the model '{body.model}' has no chat template; use /v1/completions.",
                           param="messages")
        messages = [{"role": message.role, "content": message.text()} for message in body.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # templates raise on conversations they don't support (roles, order)
            raise ApiError(400, f"messages: the model's chat template refused them: {str(error).splitlines()[0]}",
                           param="messages") from None
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = max_tokens_for(body.max_completion_tokens or body.max_tokens, len(prompt_ids), generator, "messages")
        work = submit(generator, body, prompt_ids, max_tokens)
        record = request.state.record
        record.prompt_tokens = len(prompt_ids)
        record.content["prompt"] = json.dumps(messages)
        return await _respond(state, body, record, work, "chat.completion")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, key: ApiKey = Depends(authorized)):
        generator = generator_for(body.model, key, request)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or (body.stream and len(prompts) > 1):
            raise ApiError(400, "prompt: give one prompt (streaming) or a non-empty list of prompts.", param="prompt")
        encoded = [generator.tokenizer(prompt)["input_ids"] for prompt in prompts]
        if not all(encoded):
            raise ApiError(400, "prompt: a prompt is empty.", param="prompt")
        # Every prompt is checked before any is generated.
        limits = [max_tokens_for(body.max_tokens, len(ids), generator, "prompt") for ids in encoded]
        work = [submit(generator, body, ids, limit) for ids, limit in zip(encoded, limits)]
        record = request.state.record
        record.prompt_tokens = sum(len(ids) for ids in encoded)
        record.content["prompt"] = json.dumps(prompts)
        if body.stream:
            return await _respond(state, body, record, work[0], "text_completion")
        results = [await _collect(state, item) for item in work]
        record.completion_tokens = sum(tokens for _, _, tokens in results)
        record.content["completion"] = json.dumps([text for text, _, _ in results])
        choices = [_choice(False, index, text, reason) for index, (text, reason, _) in enumerate(results)]
        return _completion(body.model, "text_completion", choices, record)

    @app.post("/v1/embeddings")
    async def embeddings(body: TextsRequest, request: Request, key: ApiKey = Depends(authorized)):
        embedder: Embedder
        embedder, texts, record = _encoder_call(state, state.embedders, body, key, request, "embeddings")
        record.prompt_tokens = embedder.count_tokens(texts)
        vectors = await run_in_threadpool(embedder.embed, texts)
        data = [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
                 if body.encoding_format == "base64" else vector}
                for index, vector in enumerate(vectors)]
        return {"object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": record.prompt_tokens, "total_tokens": record.prompt_tokens}}

    @app.post("/v1/classify")
    async def classify(body: TextsRequest, request: Request, key: ApiKey = Depends(authorized)):
        classifier: Classifier
        classifier, texts, record = _encoder_call(state, state.classifiers, body, key, request, "classification")
        results, tokens = await run_in_threadpool(classifier.classify, texts)
        record.prompt_tokens = tokens
        return {"object": "list", "model": body.model, "data": [{"index": index, **result} for index, result in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoder_call(state: State, models: dict, body: TextsRequest, key: ApiKey, request: Request, endpoint: str):
    """(model, texts, record) of an embeddings or classify request, after the model and input checks."""
    model = state.pick(models, body.model, key, endpoint)
    texts = body.texts()
    if not texts or len(texts) > state.settings.max_inputs:
        raise ApiError(400, f"input: give 1 to {state.settings.max_inputs} texts, got {len(texts)}.", param="input")
    record = request.state.record
    record.model = body.model
    return model, texts, record


async def _events(work: GenerationRequest) -> AsyncIterator[Event]:
    try:
        while True:
            event = await work.events.get()
            if event.error is not None:
                raise ApiError(500, "The server had an error while generating.") from event.error
            yield event
            if event.finish_reason:
                return
    finally:
        work.cancelled = True  # a no-op once finished; if the client went away, its row leaves the batch


async def _collect(state: State, work: GenerationRequest) -> tuple[str, str, int]:
    text, reason, tokens = "", "stop", 0
    async for event in _events(work):
        text += event.text
        if event.finish_reason:
            reason, tokens = event.finish_reason, event.completion_tokens
    return state.redact(text), reason, tokens


def _choice(chat: bool, index: int, text: str, reason: str) -> dict:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def _completion(model: str, kind: str, choices: list[dict], record: Record) -> dict:
    return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}", "object": kind,
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                      "total_tokens": record.prompt_tokens + record.completion_tokens}}


async def _respond(state: State, body: Sampling, record: Record, work: GenerationRequest, kind: str):
    chat = kind == "chat.completion"
    if not body.stream:
        text, reason, tokens = await _collect(state, work)
        record.completion_tokens = tokens
        record.content["completion"] = text
        return _completion(body.model, kind, [_choice(chat, 0, text, reason)], record)
    record.deferred = True
    return StreamingResponse(_stream(state, body, record, work, kind), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(state: State, body: Sampling, record: Record, work: GenerationRequest, kind: str) -> AsyncIterator[str]:
    chat = kind == "chat.completion"
    identifier = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(text: str | None, reason: str | None = None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        payload = {"id": identifier, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                   "model": body.model, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n"

    status, text, first = 200, "", True
    try:
        if chat:
            yield chunk(None, role=True)
        async for event in _events(work):
            # PII can span deltas: with redaction on, the text is sent redacted in one piece at the end.
            if event.text and not state.scanner:
                if first:
                    state.metrics.first_token.labels(body.model).observe(time.perf_counter() - record.start)
                    first = False
                yield chunk(event.text)
            text += event.text
            if event.finish_reason:
                record.completion_tokens = event.completion_tokens
                if state.scanner and text:
                    yield chunk(state.redact(text))
                yield chunk(None, reason=event.finish_reason)
        if (body.stream_options or {}).get("include_usage"):
            usage = _completion(body.model, kind, [], record)
            yield f"data: {json.dumps({**usage, 'object': 'chat.completion.chunk' if chat else 'text_completion'})}\n\n"
        yield "data: [DONE]\n\n"
    except ApiError as error:
        status = error.status
        state.metrics.errors.labels(error.type).inc()
        yield f"data: {json.dumps(error.body())}\n\n"
    finally:
        record.content["completion"] = state.redact(text)
        _finish(state, record, status)
