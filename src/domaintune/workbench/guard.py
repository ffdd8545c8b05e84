"""The workbench's security posture, the same as `serve`'s and the feedback page's:

- only requests whose Host header names this machine (or the address bound) are answered, so a web page
  can't read the app through DNS rebinding;
- with a token (required off loopback), every request carries it: `?token=` once, then a cookie;
- every state-changing request is a POST carrying the page's CSRF token (a form field or X-CSRF-Token).
"""
from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from domaintune.core.errors import DomaintuneError
from domaintune.core.local_pages import answer_this_machine_only
from domaintune.core.net import is_loopback

TOKEN_COOKIE = "domaintune_ui"


def check_bind(host: str, token: str | None) -> None:
    """Off loopback the workbench needs a token: anyone on the network could otherwise launch runs."""
    if not is_loopback(host) and not token:
        raise DomaintuneError(f"--host {host}: other than loopback needs --token (anyone who can reach the port could "
                              "otherwise launch runs and read your data); e.g. --token $(python -c "
                              "'import secrets; print(secrets.token_urlsafe())')")


def install_guard(app: FastAPI, host: str, token: str | None) -> None:
    """Answer only requests for this machine's names and, with a token, only requests that carry it."""
    if token is not None:
        @app.middleware("http")
        async def token_only(request: Request, call_next):
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                response = await call_next(request)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            if not hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, "").encode(), token.encode()):
                return PlainTextResponse("this workbench needs its token: open the URL `domaintune ui` printed", 401)
            return await call_next(request)

    # Bound to every address, the workbench answers to any of the machine's names (check_bind made the token
    # required there). Added last, the Host check runs first: an unknown Host is refused before anything else.
    if host not in ("0.0.0.0", "::"):
        answer_this_machine_only(app, host, "domaintune ui")
