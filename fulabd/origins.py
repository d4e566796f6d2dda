"""
Which web pages may drive the lab from a browser: the daemon's own origin
(the scheme and `Host` the client used, or behind a trusted proxy the
`X-Forwarded-Proto`/`X-Forwarded-Host` it passes on) and those given with
`--allowed-origin`.  A request with no `Origin` (the uploader, curl, Emacs)
is not a browser page's and is not judged here.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": "80", "https": "443"}
HOST = re.compile(r"[a-z0-9.-]+|[0-9a-f:.]+")  # a name or an address (IPv6 without its brackets)


def normalize(origin: str) -> str | None:
    """`scheme://host[:port]` lower-cased, the scheme's default port dropped; None if it is not one."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or \
            not HOST.fullmatch(parts.hostname):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or str(port) == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class Origins:
    def __init__(self, proxies, allowed=()):
        """`proxies.trusts(peer)` says whether a peer's X-Forwarded-* headers count."""
        self.proxies = proxies
        self.allowed_origins = {normalize(origin) for origin in allowed}

    def own(self, head) -> str | None:
        """The daemon's origin as this client reached it."""
        headers = head.headers
        scheme, host = ("https" if head.secure else "http"), headers.get("host", "")
        if self.proxies.trusts(head.peer):
            scheme = headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
            host = headers.get("x-forwarded-host", host).split(",")[0].strip()
        return normalize(f"{scheme}://{host}") if host else None

    def host_is_ours(self, head) -> bool:
        """Whether the host the client used names this machine beyond doubt: any over TLS (the certificate
        names it), else an IP address, `localhost` (or a name under it), or the host of an allowed origin; a
        request without one is no browser's.

        A page at a name its owner points at 127.0.0.1 (DNS rebinding) is, to the browser, its own origin:
        it may read the answers.  Without tokens nothing else stops it, so such a name is refused."""
        own = self.own(head)
        if own is None:
            return "host" not in head.headers and "x-forwarded-host" not in head.headers
        if own.startswith("https://"):
            return True
        host = urlsplit(own).hostname
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        return host == "localhost" or host.endswith(".localhost") or any(
            urlsplit(origin).hostname == host for origin in self.allowed_origins if origin)

    def allowed(self, head) -> bool:
        origin = head.headers.get("origin")
        if origin is None:
            return True
        normalized = normalize(origin)
        return normalized is not None and (normalized == self.own(head) or normalized in self.allowed_origins)

    def refusal(self, head) -> str:
        return (f"requests from pages at {head.headers.get('origin')!r} are refused: only the lab's own pages "
                f"({self.own(head)}) may send them; the operator may allow another with --allowed-origin ORIGIN")
