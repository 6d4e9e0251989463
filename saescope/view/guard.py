"""Who may talk to the browser server: only the user's own browser tab.

A server on 127.0.0.1 is still reachable from any web page the user visits: a page can send "simple"
cross-site POSTs (``text/plain``, no preflight) that run the model, and with DNS rebinding
(``attacker.example`` re-pointed at 127.0.0.1) it can read every answer, including snippets of the
user's corpus in the top examples. Three checks close that:

- **Host**: the ``Host`` header must name the bound loopback address (``127.0.0.1``, ``localhost``,
  ``[::1]``), the bound host, or a name given with ``--allow-host``. A rebinding page's requests carry
  the attacker's name and are refused.
- **Origin**: a POST that carries an ``Origin`` must come from one of those hosts on this port.
- **Token**: a POST must carry ``X-Saescope-Token`` with a secret drawn at launch and embedded in the
  page the server itself serves; another origin cannot read the page, so it cannot know the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlparse

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TOKEN_HEADER = "X-Saescope-Token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> str:
    """The host part of a ``Host`` header or an origin's netloc, lower-cased, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value.strip("[]")
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass
class RequestGuard:
    """The checks for one server: the names it answers to and the launch token."""

    bound_host: str
    port: int
    allowed_hosts: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def names(self) -> set[str]:
        names = {*LOOPBACK_NAMES, _hostname(self.bound_host)} | {_hostname(h) for h in self.allowed_hosts}
        return {n for n in names if n and n not in ("0.0.0.0", "::")}

    def host_problem(self, host_header: str | None) -> str | None:
        """Why a request with this ``Host`` is refused, or None."""
        if not host_header:
            return "the request has no Host header"
        if _hostname(host_header) not in self.names():
            return (f"host {host_header!r} is not this server's (a DNS-rebinding guard); open http://127.0.0.1:{self.port}/ "
                    f"or start saescope view with --allow-host {_hostname(host_header)}")
        return None

    def post_problem(self, origin: str | None, token: str | None) -> str | None:
        """Why a state-changing or model-running request is refused, or None."""
        if origin and origin != "null":
            parsed = urlparse(origin)
            if parsed.hostname is None or parsed.hostname.lower().strip("[]") not in self.names() or (parsed.port or 80) != self.port:
                return f"cross-origin request from {origin} refused"
        if not token or not hmac.compare_digest(token, self.token):
            return f"missing or wrong {TOKEN_HEADER}: use the page this server serves"
        return None
