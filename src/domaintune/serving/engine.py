"""The causal LM behind the server on torch: one model with lazily loaded peft adapters (LRU-capped)
and a background worker that batches concurrent requests. The default engine where it loads the
model is CTranslate2 (ctranslate2_engine.py), which shares this module's queue, rows and events;
embedding and classification models: encoders.py.

Batching on torch: the worker takes the oldest pending request, waits a few milliseconds for others for
the same model (base or adapter), prefills them together, left-padded, and decodes them one token
per step with the KV cache. Requests arriving later for that model are prefilled and join the
running batch between steps (continuous batching); a row leaves at an end token, a stop string or
its own max_tokens, and its text is streamed as it grows. Requests for another model wait until
the running batch has drained.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from domaintune.config.runtime import cpu_has_bf16


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

    def send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def torch_dtype(name: str):
    import torch

    if name == "auto":
        # fp16 is emulated and very slow on CPUs; bf16 only where the CPU has it natively.
        return torch.bfloat16 if torch.cuda.is_available() or cpu_has_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class AdapterPool:
    """One base model; adapters load on first use (peft `load_adapter`) and the least recently used
    is deleted beyond `capacity`. Only the generation worker thread touches the model."""

    def __init__(self, base, adapters: dict[str, str], capacity: int):
        self.model = base
        self.paths = adapters
        self.capacity = max(1, capacity)
        self.loaded: OrderedDict[str, None] = OrderedDict()

    def activate(self, name: str | None):
        """The model to generate with and a context that selects `name` (None: the base model)."""
        import contextlib

        if name is None:
            return self.model, (self.model.disable_adapter() if self.loaded else contextlib.nullcontext())
        self._load(name)
        return self.model, contextlib.nullcontext()

    def _load(self, name: str) -> None:
        """Make `name` the active adapter, loading it (and evicting the least recently used) if needed."""
        from peft import PeftModel

        if name in self.loaded:
            self.loaded.move_to_end(name)
            self.model.set_adapter(name)
            return
        if not self.loaded:
            self.model = PeftModel.from_pretrained(self.model, self.paths[name], adapter_name=name)
        else:
            self.model.load_adapter(self.paths[name], adapter_name=name)
        self.model.set_adapter(name)  # before evicting: deleting the active adapter makes peft pick another
        self.loaded[name] = None
        while len(self.loaded) > self.capacity:  # the new one is loaded first, so one always remains
            oldest, _ = self.loaded.popitem(last=False)
            self.model.delete_adapter(oldest)
        self.model.eval()


class BatchingWorker:
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

    def submit(self, request: GenerationRequest) -> None:
        request.loop = asyncio.get_running_loop()
        request.events = asyncio.Queue()
        self.pending.put(request)

    def close(self) -> None:
        self.pending.put(None)
        self.worker.join(timeout=30)

    def _run(self) -> None:
        raise NotImplementedError

    def _next(self) -> GenerationRequest | None:
        """The oldest request to start a batch with (None: stop)."""
        return self.held.pop(0) if self.held else self.pending.get()

    def _gather(self, key, limit: int, wait: float) -> list[GenerationRequest]:
        """Up to `limit` pending requests with this batch key, waiting up to `wait` seconds for them; others are held."""
        taken = [request for request in self.held if self.batch_key(request) == key][:limit]
        self.held = [request for request in self.held if request not in taken]
        deadline = time.perf_counter() + wait
        while len(taken) < limit:
            timeout = deadline - time.perf_counter()
            try:
                item = self.pending.get(timeout=timeout) if timeout > 0 else self.pending.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.pending.put(None)  # stop once the running requests are answered
                break
            (taken if self.batch_key(item) == key else self.held).append(item)
        return taken

    @staticmethod
    def _fail(requests: list[GenerationRequest], error: BaseException) -> None:
        """A failing batch must not kill the worker: its requests get a 500."""
        logging.getLogger("domaintune.serving").exception("generation failed")
        for request in {id(request): request for request in requests}.values():
            request.send(Event(finish_reason="error", error=error))


class Generator(BatchingWorker):
    """The causal LM on torch, its adapters and the continuous-batching worker thread."""

    def __init__(self, name: str, path: str, adapters: dict[str, str], dtype: str = "auto",
                 max_loaded_adapters: int = 4, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
                 trust_remote_code: bool = False, metrics=None):
        from transformers import AutoModelForCausalLM

        super().__init__(max_batch_size, batch_wait_ms, metrics)
        self.name = name
        self.tokenizer = load_serving_tokenizer(path, trust_remote_code)
        base = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        ).eval()
        base.config.use_cache = True
        self.context_length = context_length(base.config, self.tokenizer)
        self.eos_ids = end_token_ids(base.generation_config, self.tokenizer)
        self.pool = AdapterPool(base, adapters, max_loaded_adapters)
        self.engine = {"engine": "torch", "compute_type": str(base.dtype).removeprefix("torch.")}
        self.worker.start()

    @property
    def models(self) -> list[str]:
        return [self.name, *self.pool.paths]

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        batch: Batch | None = None
        while True:
            new: list[GenerationRequest] = []
            try:
                if batch is None:
                    first = self._next()
                    if first is None:
                        return
                    new = [first, *self._gather(first.model, self.max_batch_size - 1, self.batch_wait)]
                    batch = Batch(self, first.model)  # loads the adapter on first use
                elif batch.can_join and not self.held:  # requests for another model wait: the batch drains for them
                    new = self._gather(batch.model, self.max_batch_size - len(batch.rows), 0)
                if new:
                    batch.join([Row(request, self.tokenizer, self.eos_ids) for request in new])
                batch.step()
            except Exception as error:
                self._fail([*(row.request for row in batch.rows), *new] if batch is not None else new, error)
                if batch is not None:
                    batch.rows = []
            if batch is not None and not batch.rows:
                batch.close()
                batch = None


def load_serving_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


class Batch:
    """Rows generated together: one model (base or one adapter), a KV cache and a left-padded attention
    mask. New rows are prefilled on their own and join at a step boundary (continuous batching);
    finished rows leave. Positions come from the mask, as `generate` computes them, so each row's
    greedy output is what it would be alone."""

    def __init__(self, generator: Generator, model: str):
        import contextlib

        self.generator = generator
        self.model = model
        self.scope = contextlib.ExitStack()
        self.network, adapter_scope = generator.pool.activate(None if model == generator.name else model)
        self.scope.enter_context(adapter_scope)
        self.rows: list[Row] = []
        self.cache = None
        self.mask = None  # [rows, length]
        self.last = None  # [rows, 1]: each row's latest token, the next step's input
        self.can_join = True

    def close(self) -> None:
        self.scope.close()

    def _forward(self, input_ids, mask, positions, cache, **kwargs):
        import torch

        with torch.inference_mode():
            output = self.network(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True, **kwargs)
        return output.logits[:, -1].float()

    def join(self, rows: list[Row]) -> None:
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        tokenizer = self.generator.tokenizer
        padded = tokenizer.pad({"input_ids": [row.request.prompt_ids for row in rows]}, return_tensors="pt")
        mask = padded["attention_mask"]
        cache = DynamicCache(config=self.network.config)
        logits = self._forward(padded["input_ids"], mask, (mask.cumsum(-1) - 1).clamp(min=0), cache, logits_to_keep=1)
        last = choose_tokens(logits, [row.request for row in rows])
        # Joining pads the caches to one length: only plain layers (no sliding window) can be padded.
        self.can_join = all(type(layer) is DynamicLayer for layer in cache.layers)
        if self.cache is None:
            self.cache, self.mask, self.last, self.rows = cache, mask, last, rows
        else:
            length = max(self.mask.shape[1], mask.shape[1])
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, length, -2), _pad_left(theirs.keys, length, -2)])
                mine.values = torch.cat([_pad_left(mine.values, length, -2), _pad_left(theirs.values, length, -2)])
            self.mask = torch.cat([_pad_left(self.mask, length, -1), _pad_left(mask, length, -1)])
            self.last = torch.cat([self.last, last])
            self.rows = [*self.rows, *rows]
        for row, token in zip(rows, last[:, 0].tolist()):
            row.add(token)
        self._drop_finished()

    def step(self) -> None:
        import torch

        if not self.rows:
            return
        if self.generator.metrics is not None:
            self.generator.metrics.batch_size.observe(len(self.rows))
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self.last, self.mask, positions, self.cache)
        self.last = choose_tokens(logits, [row.request for row in self.rows])
        for row, token in zip(self.rows, self.last[:, 0].tolist()):
            row.add(token)
        self._drop_finished()

    def _drop_finished(self) -> None:
        import torch

        keep = [index for index, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[index] for index in keep]
        if not keep:
            return
        index = torch.tensor(keep)
        self.mask, self.last = self.mask[index], self.last[index]
        # Columns that are padding in every remaining row are dropped: attention no longer pays for them.
        start = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _pad_left(tensor, length: int, dim: int):
    import torch.nn.functional as F

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    # F.pad takes (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


def choose_tokens(logits, requests: list[GenerationRequest]):
    """[rows, 1] next tokens: argmax for temperature 0, else temperature and top-p sampling per row."""
    import torch

    tokens = logits.argmax(-1)
    for row, request in enumerate(requests):
        if request.temperature > 0:
            probabilities = (logits[row] / request.temperature).softmax(-1)
            ordered, order = probabilities.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > request.top_p  # keeps at least the most likely token
            ordered[outside] = 0
            tokens[row] = order[torch.multinomial(ordered / ordered.sum(), 1)]
    return tokens[:, None]


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
        cut = min((text.find(stop) for stop in request.stop if stop in text), default=-1)
        if cut >= 0:
            self._finish("stop", text[:cut])
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
