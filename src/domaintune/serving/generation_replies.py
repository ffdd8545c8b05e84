"""A generation's events as OpenAI's answer: a whole chat or text completion body, or its server-sent event stream."""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator

from starlette.responses import StreamingResponse

from domaintune.serving.accounting import Record, finish
from domaintune.serving.batching import Event, GenerationRequest
from domaintune.serving.errors import ApiError
from domaintune.serving.schemas import Sampling
from domaintune.serving.state import State

CLIENT_CLOSED = 499  # nginx's status for a request the client abandoned: the audit line of a dropped stream


class ClosingStreamingResponse(StreamingResponse):
    """A stream whose generator is closed when the response ends, however it ends. When the client goes away,
    Starlette stops iterating but leaves the generator suspended at its `yield`, so the generator's `finally`
    (a dropped stream's audit line and charge) would wait for garbage collection: on an idle server, minutes."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


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


async def collect(state: State, work: GenerationRequest) -> tuple[str, str, int]:
    text, reason, tokens = "", "stop", 0
    async for event in _events(work):
        text += event.text
        if event.finish_reason:
            reason, tokens = event.finish_reason, event.completion_tokens
    return state.redact(text), reason, tokens


def completion_choice(chat: bool, index: int, text: str, reason: str) -> dict:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def completion_body(model: str, kind: str, choices: list[dict], record: Record) -> dict:
    return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}", "object": kind,
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                      "total_tokens": record.prompt_tokens + record.completion_tokens}}


async def respond(state: State, body: Sampling, record: Record, work: GenerationRequest, kind: str):
    chat = kind == "chat.completion"
    if not body.stream:
        text, reason, tokens = await collect(state, work)
        record.completion_tokens = tokens
        record.content["completion"] = text
        return completion_body(body.model, kind, [completion_choice(chat, 0, text, reason)], record)
    record.deferred = True
    return ClosingStreamingResponse(_stream(state, body, record, work, kind), media_type="text/event-stream",
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

    status, text, first, finished = 200, "", True, False
    try:
        if chat:
            yield chunk(None, role=True)
        async for event in _events(work):
            record.completion_tokens = event.completion_tokens  # so far: what a dropped stream is charged
            # PII can span deltas: with redaction on, the text is sent redacted in one piece at the end.
            if event.text and not state.scanner:
                if first:
                    state.metrics.first_token.labels(body.model).observe(time.perf_counter() - record.start)
                    first = False
                yield chunk(event.text)
            text += event.text
            if event.finish_reason:
                finished = True
                if state.scanner and text:
                    yield chunk(state.redact(text))
                yield chunk(None, reason=event.finish_reason)
        if (body.stream_options or {}).get("include_usage"):
            usage = completion_body(body.model, kind, [], record)
            yield f"data: {json.dumps({**usage, 'object': 'chat.completion.chunk' if chat else 'text_completion'})}\n\n"
        yield "data: [DONE]\n\n"
    except ApiError as error:
        status = error.status
        state.metrics.errors.labels(error.type).inc()
        yield f"data: {json.dumps(error.body())}\n\n"
    finally:
        if not finished and status == 200:
            status = CLIENT_CLOSED  # the client went away mid-stream (its row leaves the batch)
        record.content["completion"] = state.redact(text)
        finish(state, record, status)
