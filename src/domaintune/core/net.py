"""Which host names are this machine: what the local pages, the server and the judge's key check trust;
and the plain forms the local pages (feedback, workbench) post."""
from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs

# The Host header values a browser sends for this machine (an IPv6 literal comes in brackets).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8765" -> "[::1]")."""
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rsplit(":", 1)[0]


def local_host_names(bound: str) -> set[str]:
    """The Host header names a local page bound to `bound` answers: this machine's loopback names and the
    address bound (bare, and in brackets as an IPv6 literal arrives). Anything else is DNS rebinding."""
    return {*LOOPBACK_HOSTS, bound, f"[{bound}]"}


def parse_form(body: bytes, max_fields: int = 32) -> dict[str, str]:
    """The posted form's fields (the last value of each); ValueError for a body that is not a plain
    UTF-8 urlencoded form of at most `max_fields` fields."""
    # Parsed here rather than by FastAPI's Form, which would need python-multipart.
    fields = parse_qs(body.decode("utf-8"), errors="strict", max_num_fields=max_fields)
    return {key: values[-1] for key, values in fields.items()}
