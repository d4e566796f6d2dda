"""
`fulab doctor URL`: walk the chain from this machine to the daemon one link
at a time (name, TCP, TLS, WebSocket upgrade, ping, the other upload paths,
listings, status), print a checklist, and stop at the first link that is
broken, saying in plain words what is wrong and what to do about it.

Plain blocking sockets on purpose: a one-shot command that must show exactly
which step failed has no use for a reactor.
"""

from __future__ import annotations

from fulabd.doctor.checks import Doctor, refusal_detail

__all__ = ["Doctor", "refusal_detail", "run"]


def run(url: str, cafile: str | None = None, token: str | None = None, timeout: float = 10.0, out=print) -> int:
    return Doctor(url, cafile, token, timeout, out).run()
