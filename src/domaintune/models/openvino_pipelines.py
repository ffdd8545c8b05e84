"""OpenVINO GenAI's continuous-batching pipelines, run in a process of their own (serving/openvino_engine.py).

Why a process: the binding's `step()` holds Python's GIL for the whole step (~25 ms for 8 rows of the 135M
model on two cores). In the server's process that starved the event loop: it ran once per step, so a
request needed a dozen steps to be parsed, authorised and queued (time to first token p50 0.45 s, p95 1.0 s at
8 streams). Here the pipelines step in a child process, and the server's worker thread waits on a pipe.

The protocol, one message at a time over a multiprocessing pipe:
- parent -> child: ("add", request_id, model, prompt_ids, sampling), ("cancel", request_id), None (stop);
- child -> parent: ("ready",) or ("failed", reason) once at start; then after each step
  ("step", [(request_id, new_token_ids, state)]) with state "running", "finished" or "ignored" (OpenVINO
  could not schedule it), or ("error", request_ids, reason) where a step failed.
This module imports only the standard library at the top: the child starts without torch.
"""
from __future__ import annotations

import multiprocessing
from collections import OrderedDict
from pathlib import Path


def continuous_batching_pipeline(gguf_file: Path | str, threads: int, max_batch_size: int):
    """OpenVINO GenAI's pipeline over one model: requests join and leave between steps, each with its own
    sampling settings. Activations in float32, so f16 weights give torch fp32's greedy answers."""
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.max_num_seqs = max_batch_size
    scheduler.enable_prefix_caching = True  # a shared system prompt is computed once
    return openvino_genai.ContinuousBatchingPipeline(
        str(gguf_file), scheduler, "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})


class PipelineProcess:
    """The parent's side: starts the child, which loads the first model of `files` (name -> GGUF file) before
    it answers; raises RuntimeError with the child's reason where it can't."""

    def __init__(self, files: dict[str, Path], threads: int, max_batch_size: int, capacity: int):
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's threads
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve_pipelines, name="domaintune-openvino", daemon=True,
                                       args=(child, {name: str(path) for name, path in files.items()}, threads,
                                             max_batch_size, capacity))
        self.process.start()
        child.close()
        try:
            reply = self.connection.recv()
        except EOFError:
            self.process.join(5)
            reply = ("failed", f"the OpenVINO process exited with code {self.process.exitcode}")
        if reply[0] != "ready":
            self.process.join(5)
            raise RuntimeError(reply[1])

    def send(self, message) -> None:
        self.connection.send(message)

    def receive(self):
        """The child's next message (blocks); EOFError where the child is gone."""
        return self.connection.recv()

    def close(self) -> None:
        try:
            self.connection.send(None)
        except OSError:  # already gone
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        self.connection.close()


def serve_pipelines(connection, files: dict[str, str], threads: int, max_batch_size: int, capacity: int) -> None:
    """The child: one pipeline per model in use (the first model always loaded, adapters' least recently
    used unloaded beyond `capacity` while idle), stepping while any request runs."""
    import numpy
    import openvino
    import openvino_genai

    first = next(iter(files))
    pipelines: OrderedDict[str, object] = OrderedDict()

    def pipeline(name: str):
        if name not in pipelines:
            pipelines[name] = continuous_batching_pipeline(files[name], threads, max_batch_size)
        pipelines.move_to_end(name)
        # Not `name`: where the other adapters are busy (or hold rows whose cancel is still on its way here)
        # the one just asked for would be the only idle one, and go.
        busy = {first, name} | {model for model, _ in handles.values()}
        idle_adapters = [model for model in pipelines if model not in busy]
        for oldest in idle_adapters[: max(0, len(pipelines) - 1 - capacity)]:
            del pipelines[oldest]
        return pipelines[name]

    handles: dict[int, tuple[str, object]] = {}  # request id -> (model, OpenVINO's handle)
    try:
        pipeline(first)
    except Exception as error:  # the parent falls back to another engine with this reason
        connection.send(("failed", _reason(error)))
        return
    connection.send(("ready",))
    while True:
        while not handles or connection.poll():  # block while idle; else take what arrived during the step
            message = connection.recv()
            if message is None:
                return
            if message[0] == "add":
                _, request_id, model, prompt_ids, sampling = message
                try:
                    config = openvino_genai.GenerationConfig()
                    for key, value in sampling.items():
                        setattr(config, key, value)
                    prompt = openvino.Tensor(numpy.array([prompt_ids], dtype=numpy.int64))
                    handles[request_id] = (model, pipeline(model).add_request(request_id, prompt, config))
                except Exception as error:  # reported to the request, the others go on
                    connection.send(("error", [request_id], _reason(error)))
            elif message[0] == "cancel" and message[1] in handles:
                handles[message[1]][1].cancel()
        updates = []
        for model in {model for model, _ in handles.values()}:
            ids = [request_id for request_id, (owner, _) in handles.items() if owner == model]
            try:
                pipelines[model].step()
            except Exception as error:  # this model's requests fail, the process goes on
                connection.send(("error", ids, _reason(error)))
                for request_id in ids:
                    del handles[request_id]
                continue
            for request_id in ids:
                handle = handles[request_id][1]
                tokens = [token for output in handle.read().values() for token in output.generated_ids] \
                    if handle.can_read() else []
                status = handle.get_status()
                state = ("running" if status == openvino_genai.GenerationStatus.RUNNING
                         else "ignored" if status == openvino_genai.GenerationStatus.IGNORED else "finished")
                updates.append((request_id, tokens, state))
                if state != "running":
                    del handles[request_id]
        connection.send(("step", updates))


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__
