"""Builds the FastAPI app from its parts (state, middleware, error handlers, route areas) and serves its own routes: health, metrics, models."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from starlette.responses import JSONResponse, Response

from domaintune.serving.auth import ApiKey, KeyStore
from domaintune.serving.encoder_routes import add_encoder_routes
from domaintune.serving.error_handlers import add_error_handlers
from domaintune.serving.errors import ApiError
from domaintune.serving.generation_routes import add_generation_routes
from domaintune.serving.middleware import add_middleware
from domaintune.serving.settings import ServeSettings
from domaintune.serving.sources import Served
from domaintune.serving.state import State


def create_app(served: Served, settings: ServeSettings, keys: KeyStore) -> FastAPI:
    state = State(served, settings, keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if state.generator:
            state.generator.close()

    app = FastAPI(title="domaintune", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.domaintune = state
    add_middleware(app, state)
    add_error_handlers(app, state)
    _add_server_routes(app, state)
    add_generation_routes(app, state)
    add_encoder_routes(app, state)
    return app


def _add_server_routes(app: FastAPI, state: State) -> None:
    @app.get("/health")
    async def health(request: Request):
        if state.generator is not None and not state.generator.alive:  # e.g. the OpenVINO process died
            return JSONResponse({"status": "unavailable", "reason": "the generation engine has stopped"}, status_code=503)
        # Probes need no key; the served names are only for a caller whose key may see them.
        try:
            key = state.keys.authenticate(request.headers.get("authorization"))
        except ApiError:
            return {"status": "ok"}
        return {"status": "ok", "models": [name for name in state.names() if key.allows(name)]}

    @app.get("/metrics")
    async def metrics(key: ApiKey = Depends(state.authorized)):
        if not key.admin:  # the metrics name every tenant's models and traffic
            raise ApiError(403, "Reading /metrics needs an admin key (admin: true in the keys file).", code="admin_required")
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models(key: ApiKey = Depends(state.authorized)):
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": state.created, "owned_by": "domaintune"}
            for name in state.names() if key.allows(name)
        ]}
