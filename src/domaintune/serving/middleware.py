"""The middleware around every request: CORS, trusted hosts, the body-size limit and the accounting of each request."""
from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request

from domaintune.core.net import LOOPBACK_HOSTS, is_loopback
from domaintune.serving.accounting import Record, finish
from domaintune.serving.state import State


def add_middleware(app: FastAPI, state: State) -> None:
    settings = state.settings
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if is_loopback(settings.host) and not state.keys.required:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        # Keyless is safe only for this machine's own clients: refusing other Host names stops a web
        # page from reaching the server through DNS rebinding.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))
    # Inside the `account` middleware (added later, so outer): its receive wrapper would hide the 413.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def account(request: Request, call_next):
        record = request.state.record = Record(request.url.path)
        response = await call_next(request)
        if not record.deferred:
            finish(state, record, response.status_code)
        return response


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
