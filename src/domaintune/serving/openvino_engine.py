"""The causal LM behind the server on OpenVINO GenAI's continuous-batching pipeline (`--engine openvino`, and
`auto` where it loads the model).

The base model and each adapter (merged into it) are converted once into the cache as GGUF files
(models/openvino_model.py). The pipelines run in a process of their own (models/openvino_pipelines.py:
OpenVINO's step holds the GIL, which starved the server's event loop); adapters' pipelines load there on
first use, the least recently used unloaded beyond --max-loaded-adapters. The worker thread sends each new
request to the running pipeline between steps (so a request starts at once, however many are in
progress) and feeds each request's new tokens to its row, which streams the text and ends at an end token,
a stop string, max_tokens or a cancelled stream; a row that ends before OpenVINO does is cancelled there.
Requests for another model wait until the running ones are done, as on torch (engine.py).
"""
from __future__ import annotations

from itertools import count
from pathlib import Path

from domaintune.models.openvino_pipelines import PipelineProcess
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
        self.engine = {"engine": "openvino", "compute_type": compute_type}
        # The base model loads now: a model OpenVINO can't run fails at startup (RuntimeError).
        self.pipelines = PipelineProcess(files, threads, max_batch_size, max_loaded_adapters)
        self.request_ids = count()
        self.worker.start()

    @property
    def models(self) -> list[str]:
        return list(self.files)

    @property
    def alive(self) -> bool:
        return super().alive and self.pipelines.process.is_alive()  # a dead child fails every request

    def close(self) -> None:
        super().close()
        self.pipelines.close()

    def _run(self) -> None:
        running: dict[int, Row] = {}
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
                for request in new:
                    request_id = next(self.request_ids)
                    running[request_id] = Row(request, self.tokenizer, self.eos_ids)
                    self.pipelines.send(("add", request_id, model, request.prompt_ids, self._sampling(request, request_id)))
                if self.metrics is not None:
                    self.metrics.batch_size.observe(len(running))
                self._receive(running)
            except Exception as error:  # EOFError: the OpenVINO process is gone, and fails every later request too
                self._fail([*(row.request for row in running.values()), *new],
                           RuntimeError("the OpenVINO process exited") if isinstance(error, EOFError) else error)
                running = {}

    def _sampling(self, request: GenerationRequest, request_id: int) -> dict:
        sampling = {"max_new_tokens": request.max_tokens, "stop_token_ids": set(self.eos_ids),
                    "do_sample": request.temperature > 0}
        if request.temperature > 0:
            # Each request samples its own sequence.
            sampling.update(temperature=request.temperature, top_p=request.top_p, rng_seed=request_id)
        return sampling

    def _receive(self, running: dict[int, Row]) -> None:
        """Feed the rows what the next step generated; rows that end leave `running` (and OpenVINO, if it was
        still generating them)."""
        message = self.pipelines.receive()
        if message[0] == "error":
            _, ids, reason = message
            self._fail([running.pop(request_id).request for request_id in ids if request_id in running],
                       RuntimeError(f"OpenVINO: {reason}"))
            return
        for request_id, tokens, state in message[1]:
            row = running.get(request_id)
            if row is None:  # it ended here before OpenVINO heard of it
                continue
            for token in tokens:
                if not row.done:
                    row.add(token)
            if state == "ignored" and not row.done:
                row.done = True
                row.request.send(Event(finish_reason="error", error=RuntimeError("OpenVINO could not schedule the request")))
            elif state == "finished":
                row.end()  # ended by OpenVINO at an end token it did not pass on (no-op where the row ended itself)
            elif row.done:
                self.pipelines.send(("cancel", request_id))  # a stop string, max_tokens or a dropped stream
            if row.done:
                del running[request_id]
