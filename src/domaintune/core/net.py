"""Which host names are this machine: what the local pages, the server and the judge's key check trust."""
from __future__ import annotations

import ipaddress

# The Host header values a browser sends for this machine (an IPv6 literal comes in brackets).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
