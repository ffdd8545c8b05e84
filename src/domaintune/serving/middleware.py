"""The middleware around every request: the concurrency limit, CORS, trusted hosts, the body-size limit and
the accounting of each request. Every refusal is an error in OpenAI's shape."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException
from starlette.routing import Match

from domaintune.core.net import LOOPBACK_HOSTS, is_loopback
from domaintune.serving.accounting import Record, finish
from domaintune.serving.errors import ApiError, overloaded
from domaintune.serving.state import State


def add_middleware(app: FastAPI, state: State) -> None:
    settings = state.settings
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if is_loopback(settings.host) and not state.keys.required:
        # Keyless is safe only for this machine's own clients: refusing other Host names stops a web
        # page from reaching the server through DNS rebinding.
        app.add_middleware(HostAllowList, allowed=LOOPBACK_HOSTS)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    app.add_middleware(Accounting, state=state, routes=app)

    # Outermost: an overloaded server refuses before doing any work for the request.
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent, errors=state.metrics.errors)


class Accounting:
    """Each request's record (`request.state.record`), finished with its status as its response starts, so the
    audit line is written before the client has the answer; a stream finishes its own. Plain ASGI, not
    Starlette's BaseHTTPMiddleware: behind that, a route's `request.is_disconnected()` never sees the client go
    (its receive wrapper is cancelled before it can answer), and an exception no handler took would leave the
    request without an audit line."""

    def __init__(self, app, state: State, routes: FastAPI):
        self.app = app
        self.state = state
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        record = scope.setdefault("state", {})["record"] = Record(_route_template(self.routes, scope))
        finished = False

        def finish_once(status: int) -> None:
            nonlocal finished
            if not (finished or record.deferred):
                finish(self.state, record, status)
            finished = True

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                finish_once(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            finish_once(500)  # no response started: an error nothing turned into one


def _route_template(app: FastAPI, scope) -> str:
    """The route's path template, or `other`: metric labels must not grow with the paths clients invent."""
    for route in app.router.routes:
        if route.matches(scope)[0] is not Match.NONE:
            return route.path
    return "other"


class ConcurrencyLimit:
    """503 for a request beyond `limit` in progress (uvicorn's own limit, higher, would answer in plain text)."""

    def __init__(self, app, limit: int, errors=None):
        self.app = app
        self.limit = limit
        self.errors = errors  # the error counter of the app's metrics
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            error = overloaded(f"{self.limit} requests in progress")
            if self.errors is not None:
                self.errors.labels(error.type).inc()
            return await error.response()(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class HostAllowList:
    """400 for a Host header not in `allowed` (port aside)."""

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        name = host[1:host.find("]")] if host.startswith("[") else host.partition(":")[0]
        if name not in self.allowed:
            error = ApiError(400, "Invalid host header: a server without API keys answers only 127.0.0.1 and localhost.",
                             code="invalid_host")
            return await error.response()(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over the limit: a declared Content-Length before anything is read, a chunked
    body once what was read passes the limit."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        declared_too_large = declared.isdigit() and int(declared) > self.limit
        received = 0

        async def limited():
            nonlocal received
            message = {} if declared_too_large else await receive()
            received += len(message.get("body", b""))
            if declared_too_large or received > self.limit:
                # An HTTPException passes FastAPI's body parsing unchanged; the handler gives it OpenAI's shape.
                raise HTTPException(413, f"Request body is larger than {self.limit} bytes.")
            return message

        await self.app(scope, limited, send)
