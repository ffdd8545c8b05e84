"""The encoder routes, /v1/embeddings and /v1/classify: texts in, vectors or labels out."""
from __future__ import annotations

import base64

import numpy as np
from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from domaintune.serving.auth import ApiKey
from domaintune.serving.encoders import Classifier, Embedder
from domaintune.serving.errors import ApiError
from domaintune.serving.schemas import TextsRequest
from domaintune.serving.state import State


def add_encoder_routes(app: FastAPI, state: State) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(body: TextsRequest, request: Request, key: ApiKey = Depends(state.authorized)):
        embedder: Embedder
        embedder, texts, record = _encoder_call(state, state.embedders, body, key, request, "embeddings")
        # Tokenising a megabyte of texts takes a fraction of a second: in the thread too, off the event loop.
        vectors, record.prompt_tokens = await run_in_threadpool(embedder.embed, texts)
        data = [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
                 if body.encoding_format == "base64" else vector}
                for index, vector in enumerate(vectors)]
        return {"object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": record.prompt_tokens, "total_tokens": record.prompt_tokens}}

    @app.post("/v1/classify")
    async def classify(body: TextsRequest, request: Request, key: ApiKey = Depends(state.authorized)):
        classifier: Classifier
        classifier, texts, record = _encoder_call(state, state.classifiers, body, key, request, "classification")
        results, tokens = await run_in_threadpool(classifier.classify, texts)
        record.prompt_tokens = tokens
        return {"object": "list", "model": body.model, "data": [{"index": index, **result} for index, result in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoder_call(state: State, models: dict, body: TextsRequest, key: ApiKey, request: Request, endpoint: str):
    """(model, texts, record) of an embeddings or classify request, after the model and input checks."""
    model = state.pick(models, body.model, key, endpoint)
    texts = body.texts()
    if not texts or len(texts) > state.settings.max_inputs:
        raise ApiError(400, f"input: give 1 to {state.settings.max_inputs} texts, got {len(texts)}.", param="input")
    record = request.state.record
    record.model = body.model
    return model, texts, record
