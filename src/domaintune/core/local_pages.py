"""What every page domaintune serves on this machine (the feedback page, the workbench) checks, so that another
web page open in the same browser can neither read it (DNS rebinding) nor act through it (CSRF)."""
from __future__ import annotations

import hmac
import secrets

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from domaintune.core.net import host_name, local_host_names, parse_form

# A form posted to a local page holds a few fields and at most a recipe's YAML; data files come by the
# workbench's upload, which has its own (larger, configurable) cap.
FORM_BODY_CAP = 2**20


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
        body = await read_body(request, FORM_BODY_CAP)  # the token may be in the body: capped before it is checked
        try:
            form = parse_form(body)
        except ValueError as error:
            raise HTTPException(400, f"bad form: {error}") from None
        self.check(request.headers.get("x-csrf-token") or form.get("csrf"))
        return form


async def read_body(request: Request, cap: int, too_large: str | None = None) -> bytearray:
    """The request's body; 413 (`too_large`) past `cap` bytes: on a declared length before a byte is read,
    else as the body arrives, so a hostile request costs at most `cap` bytes of memory."""
    refusal = HTTPException(413, too_large or f"request larger than {cap:,} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise refusal
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise refusal
    return body  # not copied to bytes: an upload may be 100 MiB
