"""The exception handlers: every error, ours, pydantic's, Starlette's or unexpected, answered in OpenAI's shape and counted."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from domaintune.serving.accounting import finish
from domaintune.serving.errors import ApiError
from domaintune.serving.state import State


def add_error_handlers(app: FastAPI, state: State) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error_response(state, error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        # A union reports each alternative: the deepest path is the most specific (a content part's text, not
        # "content is not a string"), and at one depth, the alternative of the input's type (a list too long).
        problem = max(error.errors(), key=lambda problem: (len(problem.get("loc", ())),
                                                           not problem.get("type", "").endswith("_type")))
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        if problem.get("type") == "json_invalid":
            return _error_response(state, ApiError(400, "The request body is not valid JSON.", code="invalid_json"))
        # Pydantic reports a union's alternatives as extra path parts ("str", "list[str]"): name the field.
        param = ".".join(part for part in location
                         if not part.startswith(("str", "list[", "int", "function-", "constrained-")))
        return _error_response(state, ApiError(400, f"{param or 'body'}: {problem.get('msg')}", param=param or None,
                                               code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error_response(state, ApiError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logging.getLogger("domaintune.serving").exception("unexpected error")
        record = getattr(request.state, "record", None)
        if record is not None and not record.deferred:
            finish(state, record, 500)
        return _error_response(state, ApiError(500, "The server had an error while processing the request."))


def _error_response(state: State, error: ApiError) -> JSONResponse:
    state.metrics.errors.labels(error.type).inc()
    return error.response()
