"""What the server's generation engines share: the request and the events it receives, the queue and
the worker thread that answers requests in batches (torch: engine.py; CTranslate2: ctranslate2_engine.py),
and the row that turns a request's tokens into streamed text, ending it at an end token, a stop string
or its max_tokens."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from domaintune.models.inference import until_stop


@dataclass
class Event:
    """What the worker hands a request: a text delta, then a final event with finish_reason set."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0  # generated so far (final: in all); a dropped stream is charged this
    error: BaseException | None = None


@dataclass(eq=False)  # requests are compared by identity
class GenerationRequest:
    model: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    created: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # the client went away: the row leaves the batch at the next step
    finished: bool = False  # its final event is sent
    carried: Row | None = None  # the row another engine began (load_router): its tokens continue the prompt

    def send(self, event: Event) -> None:
        self.finished = self.finished or event.finish_reason is not None
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class BatchingWorker(ABC):
    """The queue of generation requests and the worker thread that answers them in batches of requests
    with the same `batch_key` (subclasses: the torch Generator below, ctranslate2_engine.CTranslate2Engine)."""

    def __init__(self, max_batch_size: int, batch_wait_ms: float, metrics=None):
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.metrics = metrics
        self.pending: queue.Queue[GenerationRequest | None] = queue.Queue()
        self.held: list[GenerationRequest] = []  # taken from the queue but for another batch: next batches
        self.worker = threading.Thread(target=self._run, name="domaintune-generate", daemon=True)

    @staticmethod
    def batch_key(request: GenerationRequest):
        return request.model

    @property
    def queued(self) -> int:
        """Requests waiting for a place in a batch (the server refuses new ones beyond --max-pending)."""
        return self.pending.qsize() + len(self.held)

    def submit(self, requests: list[GenerationRequest]) -> None:
        """Queue one API request's prompts (several for /v1/completions with a list of prompts)."""
        for request in requests:
            request.loop = asyncio.get_running_loop()
            request.events = asyncio.Queue()
            self.pending.put(request)

    def take_over(self, requests: list[GenerationRequest]) -> None:
        """Continue requests another engine began (their `carried` rows) or had queued; any thread may call it."""
        for request in requests:
            self.pending.put(request)

    @property
    def alive(self) -> bool:
        """Whether it can still answer: /health says 503 otherwise, for a load balancer or supervisor to act on."""
        return self.worker.is_alive()

    def close(self) -> None:
        self.pending.put(None)
        self.worker.join(timeout=30)

    @abstractmethod
    def _run(self) -> None:
        """The worker thread: take requests (`_next`, `_gather`) and answer them until `_next` gives None."""

    def _next(self) -> GenerationRequest | None:
        """The oldest request to start a batch with (None: stop)."""
        return self.held.pop(0) if self.held else self.pending.get()

    def _gather(self, key, limit: int, wait: float) -> list[GenerationRequest]:
        """Up to `limit` pending requests with this batch key, waiting up to `wait` seconds for them; others are held."""
        taken = [request for request in self.held if self.batch_key(request) == key][:limit]
        self.held = [request for request in self.held if request not in taken]
        deadline = time.perf_counter() + wait
        while len(taken) < limit and (item := self._pending_request(deadline - time.perf_counter())) is not None:
            (taken if self.batch_key(item) == key else self.held).append(item)
        return taken

    def _drain(self) -> list[GenerationRequest]:
        """Every request waiting here, held or pending, taken out of the queue."""
        waiting, self.held = self.held, []
        while (item := self._pending_request(0)) is not None:
            waiting.append(item)
        return waiting

    def _pending_request(self, timeout: float) -> GenerationRequest | None:
        """The next queued request, waiting up to `timeout` seconds; None if none comes or the worker is
        stopping (the stop signal stays queued: the worker stops once the running requests are answered)."""
        try:
            item = self.pending.get(timeout=timeout) if timeout > 0 else self.pending.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self.pending.put(None)
        return item

    @staticmethod
    def _fail(requests: list[GenerationRequest], error: BaseException) -> None:
        """A failing batch must not kill the worker: its requests get a 500."""
        # The error's own traceback: `_fail` is also called outside the handler that caught it.
        logging.getLogger("domaintune.serving").error("generation failed", exc_info=error)
        for request in {id(request): request for request in requests}.values():
            request.send(Event(finish_reason="error", error=error))


class Row:
    """One request in a batch: its tokens so far, the text already streamed, and whether it is finished."""

    def __init__(self, request: GenerationRequest, tokenizer, eos_ids: list[int]):
        self.request = request
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False

    def add(self, token: int) -> None:
        """Streams the new text, and finishes the row at an end token, a stop string or max_tokens."""
        request = self.request
        if request.cancelled:
            self.done = True
            return
        if token in self.eos_ids:
            return self._finish("stop", self._decode())
        self.tokens.append(token)
        text = self._decode()
        before_stop = until_stop(text, request.stop)
        if before_stop != text:
            self._finish("stop", before_stop)
        elif len(self.tokens) >= request.max_tokens:
            self._finish("length", text)
        else:
            self._send(_safe_prefix(text, request.stop))

    def end(self) -> None:
        """The engine stopped decoding this row at an end token it did not pass on."""
        if not self.done:
            self._finish("stop", self._decode())

    def _decode(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent):
            self.request.send(Event(text=text[len(self.sent):], completion_tokens=len(self.tokens)))
            self.sent = text

    def _finish(self, reason: str, text: str) -> None:
        self._send(text)
        self.done = True
        self.request.send(Event(finish_reason=reason, completion_tokens=len(self.tokens)))


def _safe_prefix(text: str, stops: list[str]) -> str:
    """What can be streamed now: not a half-decoded character, nor the start of a stop string."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                end -= size
                break
    return text[:end]


def end_token_ids(generation_config, tokenizer) -> list[int]:
    ids = generation_config.eos_token_id if generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def context_length(config, tokenizer) -> int:
    # Tokenizers without a limit report ~1e30.
    limits = [limit for limit in (getattr(config, "max_position_embeddings", None), tokenizer.model_max_length)
              if limit and limit < 10**7]
    return int(min(limits)) if limits else 2048
