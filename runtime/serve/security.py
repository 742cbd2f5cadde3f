"""Who may open a session: the bind rule, the token and the page origin."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, tls: bool, token: str | None) -> str | None:
    """Why binding ``host`` is refused, or None: off the loopback every client crosses a network, so the audio
    must be encrypted (browsers also give a page the microphone only over https off localhost) and each client
    must prove it may use the box."""
    if is_loopback(host):
        return None
    missing = [what for what, ok in (("--certfile/--keyfile (TLS)", tls), ("--token", token)) if not ok]
    if missing:
        return (f"--host {host} is not a loopback address: serving a network needs {' and '.join(missing)}; "
                "or keep the default --host 127.0.0.1")
    return None


def token_ok(expected: str | None, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """``Authorization: Bearer T`` or ``?token=T`` (a browser's WebSocket cannot set headers)."""
    if expected is None:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else query.get("token", "")
    return hmac.compare_digest(given.encode(), expected.encode())


def origin_ok(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """A browser page may connect only from this server's own origin or one listed with --allow-origin: otherwise any
    web page the kiosk's browser opens could use its microphone session. Clients that send no Origin (not a browser)
    pass; the token is what guards them."""
    if origin is None:
        return True
    if origin in allowed:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
