"""`serve --engine auto` where OpenVINO can't serve (not installed, `--compute-type float32`, a model it can't
load; engine_choice.py) and CTranslate2 loads the model: each request goes to the engine that is fastest
for the load it arrives into.

Measured with bench/serve_throughput.py, SmolLM2-135M, 128 tokens a request: CTranslate2 answers one
request at a time about twice as fast as torch (33.6 against 19.0 tok/s on a 2-core Xeon with AMX;
31.8 against 14.8 on a 2-core AMD EPYC). But it cannot add a request to a running batch, so under 8
concurrent streams a request that just missed a batch waits for all of it (time to first token p95
8.6 and 9.2 s), and its aggregate is no better than torch's continuous batching (91 against 118 tok/s;
69 against 68), whose p95 is 0.34 and 0.78 s.

So a request that arrives while nothing else is being answered goes to CTranslate2. One that arrives
while others are in progress goes to torch, which starts it at its next step, and CTranslate2 makes
way: at its next token it hands its unfinished rows to torch, which continues each from its prompt and
the tokens it already has (greedy answers stay what either engine alone would give at float32), and
its queued requests with them. So the two engines overlap for one token at most: decoding at once on
two cores, they slowed each other down (measured: one request took 44 s, the aggregate fell to 57 tok/s).
Both hold the model and its adapters, so memory is the sum of the two.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from domaintune.serving.batching import BatchingWorker, GenerationRequest

if TYPE_CHECKING:  # ctranslate2_engine builds the router
    from domaintune.serving.ctranslate2_engine import CTranslate2Engine


class LoadRouter:
    """The generation engine the routes see (`submit`, `queued`, `models`, ...), made of two engines:
    `alone` for a request that arrives into an idle server, `together` for one that arrives while others run."""

    def __init__(self, alone: CTranslate2Engine, together: BatchingWorker):
        self.alone = alone
        self.together = together
        alone.successor = together
        self.tokenizer = together.tokenizer
        self.context_length = min(alone.context_length, together.context_length)
        self.in_progress: list[GenerationRequest] = []  # only the event loop's thread touches it (submit)

    @property
    def engine(self) -> dict:
        alone, together = self.alone.engine, self.together.engine
        return {"engine": f"{alone['engine']} (one request at a time) + {together['engine']} (concurrent)",
                "compute_type": f"{alone['compute_type']} + {together['compute_type']}"}

    @property
    def models(self) -> list[str]:
        return self.together.models

    @property
    def alive(self) -> bool:
        return self.alone.alive and self.together.alive

    @property
    def queued(self) -> int:
        return self.alone.queued + self.together.queued

    def engine_for_next(self) -> BatchingWorker:
        self.in_progress = [request for request in self.in_progress if not (request.finished or request.cancelled)]
        return self.together if self.in_progress else self.alone

    def submit(self, requests: list[GenerationRequest]) -> None:
        """One API request's prompts, all to the same engine (CTranslate2 batches a request's prompts well)."""
        engine = self.engine_for_next()
        if engine is self.together:
            self.alone.make_way()
        else:  # nothing is in progress: nothing needs to make way (a late signal is dropped)
            self.alone.making_way.clear()
        self.in_progress += requests
        engine.submit(requests)

    def close(self) -> None:
        self.alone.close()
        self.together.close()
