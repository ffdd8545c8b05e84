"""The models behind the server: one causal LM with lazily loaded peft adapters (LRU-capped),
a background worker that batches concurrent requests, and embedding and classification models.

Batching: the worker takes the oldest pending request, waits a few milliseconds for others,
and generates every pending request for the same model and sampling settings together,
left-padded with an attention mask (transformers derives the position ids from it, so a row's
greedy output is the same as alone). A stopping criterion sees each new token of every row:
it streams text deltas to the row's request, and ends the row at an end token, a stop string
or its own max_tokens, while the rest of the batch goes on.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from domaintune.serving.errors import ApiError


@dataclass
class Event:
    """What the worker hands a request: a text delta, then a final event with finish_reason set."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass
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

    def batch_key(self) -> tuple:
        # Rows of one generate call share the adapter and the sampling settings.
        return (self.model, 0.0, 1.0) if self.temperature == 0 else (self.model, self.temperature, self.top_p)

    def send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def torch_dtype(name: str):
    import torch

    from domaintune.training.hardware import cpu_has_bf16

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
        self.model.set_adapter(name)
        return self.model, contextlib.nullcontext()

    def _load(self, name: str) -> None:
        from peft import PeftModel

        if name in self.loaded:
            self.loaded.move_to_end(name)
            return
        if not self.loaded:
            self.model = PeftModel.from_pretrained(self.model, self.paths[name], adapter_name=name)
        else:
            self.model.load_adapter(self.paths[name], adapter_name=name)
        self.loaded[name] = None
        while len(self.loaded) > self.capacity:  # the new one is loaded first, so one always remains
            oldest, _ = self.loaded.popitem(last=False)
            self.model.delete_adapter(oldest)
        self.model.eval()


class Generator:
    """The causal LM, its adapters and the batching worker thread."""

    def __init__(self, name: str, path: str, adapters: dict[str, str], dtype: str = "auto",
                 max_loaded_adapters: int = 4, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
                 trust_remote_code: bool = False, metrics=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        base = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        ).eval()
        base.config.use_cache = True
        self.context_length = _context_length(base.config, self.tokenizer)
        self.eos_ids = _eos_ids(base, self.tokenizer)
        self.pool = AdapterPool(base, adapters, max_loaded_adapters)
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.metrics = metrics
        self.pending: queue.Queue[GenerationRequest | None] = queue.Queue()
        self.held: list[GenerationRequest] = []  # taken from the queue but for another model: next batches
        self.worker = threading.Thread(target=self._run, name="domaintune-generate", daemon=True)
        self.worker.start()

    @property
    def models(self) -> list[str]:
        return [self.name, *self.pool.paths]

    def submit(self, request: GenerationRequest) -> None:
        request.loop = asyncio.get_running_loop()
        request.events = asyncio.Queue()
        self.pending.put(request)

    def close(self) -> None:
        self.pending.put(None)
        self.worker.join(timeout=30)

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._generate(batch)
            except Exception as error:  # a failing batch must not kill the worker; its requests get a 500
                for request in batch:
                    request.send(Event(finish_reason="error", error=error))

    def _next_batch(self) -> list[GenerationRequest] | None:
        first = self.held.pop(0) if self.held else self.pending.get()
        if first is None:
            return None
        waiting = self.held
        deadline = time.perf_counter() + self.batch_wait
        while True:  # collect what arrives within the wait
            timeout = deadline - time.perf_counter()
            try:
                item = self.pending.get(timeout=max(timeout, 0)) if timeout > 0 else self.pending.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.pending.put(None)  # stop after this batch
                break
            waiting.append(item)
        batch = [first]
        self.held = []
        for request in waiting:
            if request.batch_key() == first.batch_key() and len(batch) < self.max_batch_size:
                batch.append(request)
            else:
                self.held.append(request)
        return batch

    def _generate(self, batch: list[GenerationRequest]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        first = batch[0]
        padded = self.tokenizer.pad({"input_ids": [request.prompt_ids for request in batch]}, return_tensors="pt")
        sampling = (
            {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        rows = RowStreams(batch, self.tokenizer, self.eos_ids, padded["input_ids"].shape[1])
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
        model, adapter_scope = self.pool.activate(None if first.model == self.name else first.model)
        with adapter_scope, torch.inference_mode():
            model.generate(
                **padded,
                max_new_tokens=max(request.max_tokens for request in batch),
                eos_token_id=self.eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([rows]),
                **sampling,
            )
        rows.finish_all("length")


class RowStreams:
    """A transformers stopping criterion that turns each row's new tokens into text deltas for its
    request and tells generate which rows are finished."""

    def __init__(self, batch: list[GenerationRequest], tokenizer, eos_ids: list[int], prompt_length: int):
        self.batch = batch
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.prompt_length = prompt_length
        self.tokens: list[list[int]] = [[] for _ in batch]
        self.sent = [""] * len(batch)
        self.done = [False] * len(batch)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        for row, request in enumerate(self.batch):
            if self.done[row]:
                continue
            token = int(input_ids[row, -1])
            if token in self.eos_ids:
                self._finish(row, "stop", self._decode(row))
                continue
            self.tokens[row].append(token)
            text = self._decode(row)
            cut = min((text.find(stop) for stop in request.stop if stop in text), default=-1)
            if cut >= 0:
                self._finish(row, "stop", text[:cut])
            elif len(self.tokens[row]) >= request.max_tokens:
                self._finish(row, "length", text)
            else:
                self._send(row, _safe_prefix(text, request.stop))
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _decode(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)

    def _send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]):
            self.batch[row].send(Event(text=text[len(self.sent[row]):]))
            self.sent[row] = text

    def _finish(self, row: int, reason: str, text: str) -> None:
        self._send(row, text)
        self.done[row] = True
        self.batch[row].send(Event(finish_reason=reason, completion_tokens=len(self.tokens[row])))

    def finish_all(self, reason: str) -> None:
        for row in range(len(self.batch)):
            if not self.done[row]:
                self._finish(row, reason, self._decode(row))


def _safe_prefix(text: str, stops: list[str]) -> str:
    """What can be streamed now: not a half-decoded character, nor the start of a stop string."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                end -= size
                break
    return text[:end]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _context_length(config, tokenizer) -> int:
    # Tokenizers without a limit report ~1e30.
    limits = [limit for limit in (getattr(config, "max_position_embeddings", None), tokenizer.model_max_length)
              if limit and limit < 10**7]
    return int(min(limits)) if limits else 2048


class Embedder:
    def __init__(self, path: str, trust_remote_code: bool = False):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device="cpu", trust_remote_code=trust_remote_code)
        self.lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in self.model.tokenizer(texts)["input_ids"])

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self.lock:
            return self.model.encode(texts, convert_to_numpy=True).tolist()


class Classifier:
    """A sequence or token classification head model with id2label."""

    def __init__(self, path: str, trust_remote_code: bool = False):
        import json
        from pathlib import Path

        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        architecture = (json.loads((Path(path) / "config.json").read_text()).get("architectures") or [""])[0]
        self.per_token = architecture.endswith("ForTokenClassification")
        loader = AutoModelForTokenClassification if self.per_token else AutoModelForSequenceClassification
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = loader.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code).eval()
        self.labels = {int(key): value for key, value in self.model.config.id2label.items()}
        self.lock = threading.Lock()

    def classify(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        import torch

        with self.lock, torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                                   return_offsets_mapping=self.per_token)
            offsets = batch.pop("offset_mapping", None)
            probabilities = self.model(**batch).logits.float().softmax(-1)
        tokens = int(batch["attention_mask"].sum())
        if not self.per_token:
            return [self._scores(row) for row in probabilities], tokens
        results = []
        for index, text in enumerate(texts):
            entities = []
            for position, row in enumerate(probabilities[index]):
                start, end = (int(value) for value in offsets[index, position])
                if end > start and batch["attention_mask"][index, position]:
                    entities.append({"text": text[start:end], "start": start, "end": end, **self._scores(row)})
            results.append({"tokens": entities})
        return results, tokens

    def _scores(self, row) -> dict[str, Any]:
        best = int(row.argmax())
        return {"label": self.labels[best], "score": float(row[best]),
                "scores": {self.labels[index]: float(value) for index, value in enumerate(row)}}


def check_capacity(generator: Generator, prompt_tokens: int, max_tokens: int, param: str) -> None:
    if prompt_tokens + max_tokens > generator.context_length:
        raise ApiError(400, f"{param}: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the model's "
                            f"context of {generator.context_length} tokens", param=param, code="context_length_exceeded")
