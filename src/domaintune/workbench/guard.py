"""The workbench's security posture, the same as `serve`'s and the feedback page's:

- only requests whose Host header names this machine (or the address bound) are answered, so a web page
  can't read the app through DNS rebinding;
- with a token (required off loopback), every request carries it: `?token=` once, then a cookie;
- every state-changing request is a POST carrying the page's CSRF token (a form field or X-CSRF-Token).
"""
from __future__ import annotations

import hmac
import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from domaintune.core.errors import DomaintuneError
from domaintune.core.net import host_name, is_loopback, local_host_names, parse_form

TOKEN_COOKIE = "domaintune_ui"


def check_bind(host: str, token: str | None) -> None:
    """Off loopback the workbench needs a token: anyone on the network could otherwise launch runs."""
    if not is_loopback(host) and not token:
        raise DomaintuneError(f"--host {host}: other than loopback needs --token (anyone who can reach the port could "
                              "otherwise launch runs and read your data); e.g. --token $(python -c "
                              "'import secrets; print(secrets.token_urlsafe())')")


def install_guard(app: FastAPI, host: str, token: str | None) -> None:
    """Answer only requests for this machine's names and, with a token, only requests that carry it."""
    any_name = host in ("0.0.0.0", "::")  # they answer to any name of the machine; the token guards them instead
    allowed_hosts = local_host_names(host)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not any_name and host_name(request.headers.get("host", "")) not in allowed_hosts:
            return PlainTextResponse("unknown Host: open the workbench at the address `domaintune ui` printed", 403)
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = await call_next(request)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        if not hmac.compare_digest(request.cookies.get(TOKEN_COOKIE, "").encode(), token.encode()):
            return PlainTextResponse("this workbench needs its token: open the URL `domaintune ui` printed", 401)
        return await call_next(request)


class PageToken:
    """The CSRF token every page embeds and every state-changing request must send back."""

    def __init__(self) -> None:
        self.value = secrets.token_urlsafe(32)

    def check(self, given: str | None) -> None:
        if not given or not hmac.compare_digest(given.encode(), self.value.encode()):
            raise HTTPException(403, "missing or stale page token: reload the page and try again")

    async def form(self, request: Request) -> dict[str, str]:
        """The posted form, once its token (form field or X-CSRF-Token header) is checked."""
        try:
            form = parse_form(await request.body())
        except ValueError as error:
            raise HTTPException(400, f"bad form: {error}") from None
        self.check(request.headers.get("x-csrf-token") or form.get("csrf"))
        return form
