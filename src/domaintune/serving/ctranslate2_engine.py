"""The causal LM behind the server on CTranslate2 (`--engine ctranslate2`, and with torch in `auto`'s load router
where OpenVINO can't take the model: engine_choice.py).

The base model and each adapter (merged into it) are converted once into the cache (models/generation.py);
converted adapters load on first use, the least recently used unloaded beyond --max-loaded-adapters.
Batching: the worker takes the oldest request, waits --batch-wait-ms for others with the same model
and sampling settings, and decodes them together in one CTranslate2 call whose per-token callback
streams each row's text and ends a row at its stop string, its max_tokens or a cancelled stream.
CTranslate2 can't add rows to a running batch, so requests arriving meanwhile start the next batch.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from domaintune.models.generation import CTranslate2Generator, one_token_prompts_apart
from domaintune.serving.batching import BatchingWorker, GenerationRequest, Row


class CTranslate2Engine(BatchingWorker):
    def __init__(self, name: str, base: CTranslate2Generator, adapters: dict[str, Path], context: int,
                 max_loaded_adapters: int = 4, max_batch_size: int = 16, batch_wait_ms: float = 5.0, metrics=None):
        super().__init__(max_batch_size, batch_wait_ms, metrics)
        self.name = name
        self.base = base
        self.converted = {name: base.model_dir, **adapters}
        self.loaded: OrderedDict[str, CTranslate2Generator] = OrderedDict([(name, base)])
        self.capacity = max(1, max_loaded_adapters)
        self.tokenizer = base.tokenizer
        self.context_length = context
        self.eos_ids = base.end_ids
        self.successor: BatchingWorker | None = None  # who continues this engine's rows when it makes way
        self.making_way = threading.Event()
        self.worker.start()

    @property
    def engine(self) -> dict:
        return self.base.describe()

    @property
    def models(self) -> list[str]:
        return list(self.converted)

    @staticmethod
    def batch_key(request: GenerationRequest):
        # One CTranslate2 call samples every row alike: only requests with the same settings share it.
        return request.model, request.temperature, request.top_p if request.temperature > 0 else 1.0

    def _model(self, name: str) -> CTranslate2Generator:
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        base = self.base
        self.loaded[name] = CTranslate2Generator(self.converted[name], self.tokenizer, base.compute_type, base.threads,
                                                 base.end_ids)
        adapters = [model for model in self.loaded if model != self.name]
        for oldest in adapters[: max(0, len(adapters) - self.capacity)]:
            del self.loaded[oldest]  # the base stays loaded: it is every adapter's fallback and the default
        return self.loaded[name]

    def _run(self) -> None:
        while True:
            first = self._next()
            if first is None:
                return
            requests = [first, *self._gather(self.batch_key(first), self.max_batch_size - 1, self.batch_wait)]
            for group in one_token_prompts_apart([request.prompt_ids for request in requests]):
                chosen = [requests[i] for i in group]
                try:
                    self._generate(chosen)
                except Exception as error:
                    self._fail(chosen, error)

    def make_way(self) -> None:
        """Hand the running rows and the queued requests to `successor` at the next token (load_router)."""
        self.making_way.set()

    def _generate(self, requests: list[GenerationRequest]) -> None:
        model = self._model(requests[0].model)
        rows = [Row(request, self.tokenizer, self.eos_ids) for request in requests]
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(rows))
        temperature = requests[0].temperature

        def on_token(step) -> bool:
            row = rows[step.batch_id]
            if not row.done:
                row.add(step.token_id)
            return row.done or self.making_way.is_set()  # True ends this row's decoding

        results = model.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(request.prompt_ids) for request in requests],
            include_prompt_in_result=False, callback=on_token, return_end_token=True,
            **model.options(max(request.max_tokens for request in requests), temperature or None, requests[0].top_p))
        unfinished = []
        for row, result in zip(rows, results):
            ids = result.sequences_ids[0]
            if ids and ids[-1] in row.eos_ids:  # an end token can end decoding without reaching the callback
                row.end()
            elif not row.done:
                unfinished.append(row)
        if self.making_way.is_set() and self.successor is not None:
            for row in unfinished:
                row.request.carried = row
            self.successor.take_over([row.request for row in unfinished] + self._drain())
            self.making_way.clear()
        else:
            for row in unfinished:
                row.end()
