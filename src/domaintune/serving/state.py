"""What one app's requests share: the loaded models, settings, keys and metrics, and who may use which model."""
from __future__ import annotations

import time

from fastapi import Request
from rich.console import Console

from domaintune.serving.auth import ApiKey, KeyStore, check_scope
from domaintune.serving.encoders import Classifier, Embedder
from domaintune.serving.engine_choice import text_engine
from domaintune.serving.errors import ApiError
from domaintune.serving.prometheus import Metrics
from domaintune.serving.settings import ServeSettings
from domaintune.serving.sources import Served


class State:
    def __init__(self, served: Served, settings: ServeSettings, keys: KeyStore, console=None):
        self.settings = settings
        self.keys = keys
        self.metrics = Metrics()
        remote = {"trust_remote_code": settings.trust_remote_code}
        self.generator = (text_engine(served.chat, served.adapters, settings, self.metrics, console or Console(stderr=True))
                          if served.chat else None)
        self.embedders = {name: Embedder(path, **remote) for name, path in served.embeddings.items()}
        self.classifiers = {name: Classifier(path, **remote) for name, path in served.classifiers.items()}
        self.created = int(time.time())
        self.scanner = None
        if settings.redact_pii:
            from domaintune.config import PiiConfig
            from domaintune.data.pii import PiiScanner

            self.scanner = PiiScanner(PiiConfig())

    def names(self) -> list[str]:
        return [*(self.generator.models if self.generator else []), *self.embedders, *self.classifiers]

    async def authenticated(self, request: Request) -> ApiKey:
        """The caller's key, noted on the request's record; a route that depends on this admits the request itself."""
        key = self.keys.authenticate(request.headers.get("authorization"))
        request.state.record.key = key
        return key

    async def authorized(self, request: Request) -> ApiKey:
        """The route dependency: the caller's key, admitted under its rate limits and noted on the request's record."""
        key = await self.authenticated(request)
        self.keys.admit(key)
        return key

    def pick(self, models: dict, name: str, key: ApiKey, endpoint: str):
        if name not in models:
            known = name in self.names()
            raise ApiError(400 if known else 404, f"The model '{name}' {'can not be used with ' + endpoint if known else 'does not exist'}.",
                           param="model", code="model_not_supported" if known else "model_not_found")
        check_scope(key, name)
        return models[name]

    def redact(self, text: str) -> str:
        return self.scanner.redact(text)[0] if self.scanner else text
