"""What every page domaintune serves on this machine (the feedback page, the workbench) checks, so that another
web page open in the same browser can neither read it (DNS rebinding) nor act through it (CSRF)."""
from __future__ import annotations

import hmac
import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from domaintune.core.net import host_name, local_host_names, parse_form


def answer_this_machine_only(app: FastAPI, host: str, opened_by: str) -> None:
    """Answer only requests whose Host header names this machine or the address bound (`host`)."""
    allowed_hosts = local_host_names(host)

    @app.middleware("http")
    async def known_hosts_only(request: Request, call_next):
        if host_name(request.headers.get("host", "")) not in allowed_hosts:
            return PlainTextResponse(f"unknown Host: open the page at the address `{opened_by}` printed", 403)
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
