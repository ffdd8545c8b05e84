"""A generation's events as OpenAI's answer: a whole chat or text completion body, or its server-sent event stream."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator

from starlette.requests import Request

from domaintune.core.streaming import ClosingStreamingResponse
from domaintune.serving.accounting import Record, finish
from domaintune.serving.batching import Event, GenerationRequest
from domaintune.serving.errors import ApiError
from domaintune.serving.schemas import Sampling
from domaintune.serving.state import State

CLIENT_CLOSED = 499  # nginx's status for a request the client abandoned: the audit line of a dropped stream
# How often a whole (not streamed) answer checks that its client is still there: nothing else reads the
# connection while the rows decode, and a row nobody waits for would decode up to max_tokens.
DISCONNECT_POLL_SECONDS = 0.25


async def _events(work: GenerationRequest) -> AsyncIterator[Event]:
    """A row's events up to its last. Its readers (`collect_all`, `_stream`) cancel the row when they end."""
    while True:
        event = await work.events.get()
        if event.error is not None:
            raise ApiError(500, "The server had an error while generating.") from event.error
        yield event
        if event.finish_reason:
            return


async def collect_all(state: State, request: Request, record: Record,
                      work: list[GenerationRequest]) -> list[tuple[str, str]]:
    """Every prompt's whole answer and finish reason; `record.completion_tokens` counts the tokens as they come.
    Where the client goes away first (a 499 in the audit line) or one prompt fails, every row still decoding
    is cancelled, none goes on to max_tokens for nobody, and the key is charged what was decoded."""
    so_far = [0] * len(work)

    async def collect(index: int, item: GenerationRequest) -> tuple[str, str]:
        text, reason = "", "stop"
        async for event in _events(item):
            text += event.text
            so_far[index] = event.completion_tokens
            record.completion_tokens = sum(so_far)
            reason = event.finish_reason or reason
        return state.redact(text), reason

    tasks = [asyncio.ensure_future(collect(index, item)) for index, item in enumerate(work)]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=DISCONNECT_POLL_SECONDS,
                                               return_when=asyncio.FIRST_EXCEPTION)
            failed = next((task for task in done if task.exception() is not None), None)
            if failed is not None:
                raise failed.exception()
            if pending and await request.is_disconnected():
                raise ApiError(CLIENT_CLOSED, "The client closed the connection before the answer was complete.")
        return [task.result() for task in tasks]
    finally:
        for task, item in zip(tasks, work):
            task.cancel()
            item.cancelled = True  # a no-op once finished


def completion_choice(chat: bool, index: int, text: str, reason: str) -> dict:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def completion_body(model: str, kind: str, choices: list[dict], record: Record) -> dict:
    return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}", "object": kind,
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                      "total_tokens": record.prompt_tokens + record.completion_tokens}}


async def respond(state: State, request: Request, body: Sampling, record: Record, work: GenerationRequest, kind: str):
    chat = kind == "chat.completion"
    if not body.stream:
        [(text, reason)] = await collect_all(state, request, record, [work])
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
        # A no-op once finished; if the client went away (even right after the role chunk), the row leaves the batch.
        work.cancelled = True
        if not finished and status == 200:
            status = CLIENT_CLOSED  # the client went away mid-stream
        record.content["completion"] = state.redact(text)
        finish(state, record, status)
