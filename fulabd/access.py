"""
Who may connect: access tokens, the client's address behind a trusted
proxy, and the caps on open WebSocket connections.

Nothing here renders HTTP; `fulabd.web` asks the `Gate` and answers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections import Counter

from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

MIN_TOKEN_LENGTH = 16
MAKE_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
SELF_PROBE = "self-probe"


class TokenFileError(ValueError):
    """The token file cannot be used; the message says what to fix."""


class Tokens:
    """The accepted tokens and their names; lookups take the same time whichever token (if any) matches."""

    def __init__(self, named: dict[str, str]):
        # Compare fixed-length digests, so neither a token's length nor its content shows in the timing.
        self._digests = [(hashlib.sha256(token.encode()).digest(), name) for token, name in named.items()]

    def __len__(self):
        return len(self._digests)

    def name_of(self, presented: str | None) -> str | None:
        """The name of the token presented, or None when it is missing or not accepted."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, name in self._digests:
            if hmac.compare_digest(known, digest):
                found = name
        return found


def fingerprint(token: str) -> str:
    """A name for a token that has none: short, stable, and useless for guessing it."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]


def load_tokens(path: str) -> Tokens:
    """Read `TOKEN [NAME]` lines; `#` starts a comment, blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenFileError(f"cannot read the token file {path}: {e}") from None
    named: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split(None, 1)
        if not fields:
            continue
        token = fields[0]
        name = fields[1].strip() if len(fields) > 1 else fingerprint(token)
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(f"{path} line {number}: a token must have at least {MIN_TOKEN_LENGTH} "
                                 f"characters; make one with {MAKE_TOKEN}")
        if token in named:
            raise TokenFileError(f"{path} line {number}: this token is already listed (as {named[token]!r}); "
                                 "give each client its own token")
        named[token] = name
    if not named:
        raise TokenFileError(f"{path} holds no token; add lines `TOKEN NAME` (make a token with {MAKE_TOKEN}) "
                             "or leave out --token-file to run without access control")
    return Tokens(named)


def readable_by_others(path: str) -> bool:
    """True when users other than the owner may read the token file."""
    return bool(os.stat(path).st_mode & 0o044)


def presented_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a client sent: `Authorization: Bearer T`, else `?token=T` (for browsers and old clients)."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return query_token or None


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A `--trusted-proxy` value: an address or a network (`10.0.0.0/8`)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def _address(text: str):
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """`X-Forwarded-For` names the client only when the TCP peer is one of these proxies."""

    def __init__(self, networks=()):
        self.networks = list(networks)

    def trusts(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def client_address(self, host: str, forwarded_for: str | None) -> str:
        """The client's address: the TCP peer, or, behind trusted proxies, the last hop they were told of."""
        if not forwarded_for or not self.trusts(host):
            return str(_address(host) or host)
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return str(_address(hop) or hop)
        return str(_address(hops[0]) or hops[0]) if hops else host


class ConnectionLimits:
    """Caps on open WebSocket connections, in all and per client address (0: no cap)."""

    def __init__(self, total: int = 0, per_address: int = 0):
        self.total = total
        self.per_address = per_address
        self.open: Counter[str] = Counter()

    def check(self, address: str):
        """Raise `ConnectionDeny(503)` when one more connection from `address` would pass a cap."""
        if self.total and sum(self.open.values()) >= self.total:
            raise ConnectionDeny(503, f"the server already has its maximum of {self.total} WebSocket "
                                      "connections open; retry later")
        if self.per_address and self.open[address] >= self.per_address:
            raise ConnectionDeny(503, f"{address} already has the maximum of {self.per_address} WebSocket "
                                      "connections open; close some, or ask the operator to raise "
                                      "--max-connections-per-ip")

    def opened(self, address: str):
        self.open[address] += 1

    def closed(self, address: str):
        self.open[address] -= 1
        if not self.open[address]:
            del self.open[address]


class Gate:
    """The one place that decides whether a request or WebSocket may proceed.

    The listener supervisor's self-probe carries a secret made afresh by each
    process: it passes the token check and is not counted against the caps,
    so neither makes a healthy port look dead.
    """

    _log = Logger()

    def __init__(self, tokens: Tokens | None = None, proxies: TrustedProxies | None = None,
                 limits: ConnectionLimits | None = None):
        self.tokens = tokens
        self.proxies = proxies or TrustedProxies()
        self.limits = limits or ConnectionLimits()
        self.refused: Counter[str] = Counter()
        self.admitted = 0
        self._ignored_proxies: set[str] = set()
        secret = secrets.token_urlsafe(32)
        self._probe = Tokens({secret: SELF_PROBE})
        self.probe_headers = {"Authorization": f"Bearer {secret}"}

    def _name_of(self, presented: str | None) -> str | None:
        probe = self._probe.name_of(presented)
        named = self.tokens.name_of(presented) if self.tokens is not None else None
        return probe or named

    # -- twisted.web requests ------------------------------------------------

    def _client(self, host: str, forwarded: str | None) -> str:
        if forwarded and not self.proxies.trusts(host) and host not in self._ignored_proxies:
            self._ignored_proxies.add(host)
            self._log.warn("ignoring X-Forwarded-For from {peer}, which is not a trusted proxy; if it is your "
                           "proxy, pass --trusted-proxy {peer} so that clients are told apart", peer=host)
        return self.proxies.client_address(host, forwarded)

    def request_client(self, request) -> str:
        forwarded = request.getHeader(b"x-forwarded-for")
        return self._client(host_of(request.getClientAddress()), forwarded.decode("latin-1") if forwarded else None)

    def request_allowed(self, request) -> bool:
        """True when no token is needed or the request carries an accepted one."""
        if self.tokens is None:
            return True
        presented = self._request_token(request)
        if self._name_of(presented) is not None:
            return True
        self.refused["unauthorized"] += 1
        self._log.info("refused {method} {path} from {peer}: {why}", method=request.method.decode("latin-1"),
                       path=request.path.decode("latin-1"), peer=self.request_client(request),
                       why="wrong token" if presented else "no token")
        return False

    def _request_token(self, request) -> str | None:
        authorization = request.getHeader(b"authorization")
        query = request.args.get(b"token", [None])[0]
        return presented_token(authorization.decode("latin-1") if authorization else None,
                               query.decode("utf-8", "surrogateescape") if query else None)

    def requester_of(self, request) -> str | None:
        """The name of the token an HTTP request carries (e.g. a PAR's `:author`)."""
        return self._name_of(self._request_token(request))

    # -- WebSocket handshakes (Autobahn's ConnectionRequest) -----------------

    def _presented(self, request) -> str | None:
        return presented_token(request.headers.get("authorization"), (request.params.get("token") or [None])[0])

    def uploader_of(self, request) -> str | None:
        """The name of the token a WebSocket client presented (its `:uploader`)."""
        return self._name_of(self._presented(request))

    def admit(self, request, protocol) -> str:
        """Count an opening WebSocket until it closes; its client's address, or `ConnectionDeny(503)`."""
        address = self._client(host_of(protocol.transport.getPeer()), request.headers.get("x-forwarded-for"))
        if self._probe.name_of(self._presented(request)):
            return address
        try:
            self.limits.check(address)
        except ConnectionDeny as e:
            self.refused["over-limit"] += 1
            self._log.warn("refused a WebSocket from {peer}: {reason}", peer=address, reason=e.reason)
            raise
        self.limits.opened(address)
        self.admitted += 1
        protocol.is_closed.addBoth(self._closed, address)
        return address

    def _closed(self, result, address: str):
        self.limits.closed(address)
        return result


def host_of(address) -> str:
    """The host of a peer address; `local` for a Unix socket."""
    return getattr(address, "host", None) or "local"
