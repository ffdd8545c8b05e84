"""The causal LM behind the server on OpenVINO GenAI's continuous-batching pipeline (`--engine openvino`, and
`auto` where it loads the model).

The base model and each adapter (merged into it) are converted once into the cache as GGUF files
(models/openvino_model.py); adapters' pipelines load on first use, the least recently used unloaded beyond
--max-loaded-adapters. The worker thread adds each new request to the running pipeline between steps (so a
request starts at once, however many are in progress), steps it, and feeds each request's new tokens to its
row, which streams the text and ends at an end token, a stop string, max_tokens or a cancelled stream;
a row that ends before OpenVINO does is cancelled there. Requests for another model wait until the
running ones are done, as on torch (engine.py).

Measured with bench/serve_throughput.py on a 2-core Xeon (bench/README): see the README's serve table.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from domaintune.models.openvino_model import continuous_batching_pipeline
from domaintune.serving.batching import BatchingWorker, Event, GenerationRequest, Row


class OpenVINOEngine(BatchingWorker):
    def __init__(self, name: str, files: dict[str, Path], tokenizer, eos_ids: list[int], context: int,
                 compute_type: str, threads: int, max_loaded_adapters: int = 4, max_batch_size: int = 16,
                 batch_wait_ms: float = 5.0, metrics=None):
        super().__init__(max_batch_size, batch_wait_ms, metrics)
        self.name = name
        self.files = files  # model name -> GGUF file; the base model first
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.context_length = context
        self.threads = threads
        self.capacity = max(1, max_loaded_adapters)
        self.engine = {"engine": "openvino", "compute_type": compute_type}
        self.loaded: OrderedDict[str, object] = OrderedDict()
        self._pipeline(name)  # the base model loads now: a model OpenVINO can't run fails at startup
        self.request_ids = 0
        self.worker.start()

    @property
    def models(self) -> list[str]:
        return list(self.files)

    def _pipeline(self, name: str):
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        self.loaded[name] = continuous_batching_pipeline(self.files[name], self.threads, self.max_batch_size)
        adapters = [model for model in self.loaded if model != self.name]
        for oldest in adapters[: max(0, len(adapters) - self.capacity)]:
            del self.loaded[oldest]  # the base stays loaded: it is the default model
        return self.loaded[name]

    def _run(self) -> None:
        running: list[tuple[Row, object]] = []  # (row, OpenVINO's handle on its request)
        model = self.name
        while True:
            new: list[GenerationRequest] = []
            try:
                if not running:
                    first = self._next()
                    if first is None:
                        return
                    model = first.model
                    new = [first, *self._gather(model, self.max_batch_size - 1, self.batch_wait)]
                elif not self.held:  # requests for another model wait: the running ones finish first
                    new = self._gather(model, self.max_batch_size - len(running), 0)
                pipeline = self._pipeline(model)
                running += [(Row(request, self.tokenizer, self.eos_ids), self._add(pipeline, request)) for request in new]
                if self.metrics is not None:
                    self.metrics.batch_size.observe(len(running))
                pipeline.step()
                running = [(row, handle) for row, handle in running if not self._read(row, handle)]
            except Exception as error:
                self._fail([*(row.request for row, _ in running), *new], error)
                running = []

    def _add(self, pipeline, request: GenerationRequest):
        import numpy
        import openvino
        import openvino_genai

        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = request.max_tokens
        config.stop_token_ids = set(self.eos_ids)
        config.do_sample = request.temperature > 0
        if config.do_sample:
            config.temperature, config.top_p = request.temperature, request.top_p
            config.rng_seed = self.request_ids  # each request samples its own sequence
        self.request_ids += 1
        prompt = openvino.Tensor(numpy.array([request.prompt_ids], dtype=numpy.int64))
        return pipeline.add_request(self.request_ids, prompt, config)

    @staticmethod
    def _read(row: Row, handle) -> bool:
        """Feed the row the tokens its request generated in the last step; whether the row is finished."""
        import openvino_genai

        if handle.can_read():
            for output in handle.read().values():
                for token in output.generated_ids:
                    if not row.done:
                        row.add(token)
        status = handle.get_status()
        if status == openvino_genai.GenerationStatus.RUNNING:
            if row.done:
                handle.cancel()  # a stop string, max_tokens or the client went away: OpenVINO stops too
            return row.done
        if status == openvino_genai.GenerationStatus.IGNORED and not row.done:  # its scheduler could not fit it
            row.done = True
            row.request.send(Event(finish_reason="error", error=RuntimeError("OpenVINO could not schedule the request")))
        row.end()  # ended by OpenVINO at an end token it did not pass on (no-op where the row ended itself)
        return True
