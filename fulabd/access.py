"""
Who may do what: the one decision taken on every request head (token and
scope, body size, Origin, connection caps), before anything else is done
with the request.

Nothing here renders HTTP; `fulabd.channel` asks the `Gate` at header time
and answers.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, replace

from twisted.logger import Logger

from fulabd import endpoints
from fulabd.netaddr import TrustedProxies, host_of
from fulabd.origins import Origins
from fulabd.tokens import ANYONE, UPLOAD, Principal, Tokens, presented_token, refusal_detail

SELF_PROBE = "self-probe"
UNAUTHORIZED_DETAIL = ("this server needs an access token: send the header `Authorization: Bearer TOKEN` "
                       "(fulab-upload --token or FULAB_TOKEN) or add ?token=TOKEN to the URL; "
                       "if yours was refused, ask the operator for a valid one")


# Headers that decide who a request acts for, where it goes and what body it has.  Twisted reads the last value
# of a header, Autobahn all of them joined, the gate the first: given twice, each could see a different request
# (a UI file to the gate, a viewer socket to the dispatch), so such a request is refused whole.
SINGULAR_HEADERS = frozenset({"authorization", "connection", "content-length", "content-type", "host", "origin",
                              "sec-websocket-key", "sec-websocket-version", "transfer-encoding", "upgrade",
                              "x-forwarded-for"})


@dataclass(frozen=True)
class Head:
    """A request as the gate sees it: the request line and headers, no body."""

    method: bytes
    uri: bytes
    headers: dict[str, str]    # lower-case names, the first value of each
    peer: str                  # the TCP peer's host
    secure: bool               # came in over TLS
    repeated: tuple[str, ...] = ()  # those of SINGULAR_HEADERS given more than once

    @property
    def path(self) -> str:
        return endpoints.request_path(self.uri)

    @property
    def params(self) -> dict[str, list[str]]:
        return endpoints.request_query(self.uri)

    @property
    def upgrade(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@dataclass(frozen=True)
class Decision:
    """The gate's answer: `code` 0 lets the request through, acting for `principal`; else the refusal."""

    principal: Principal | None
    address: str
    endpoint: endpoints.Endpoint
    code: int = 0
    err: str = ""
    detail: str = ""
    own_origin: str | None = None   # the daemon's origin as this client reached it (for the UI's CSP)

    @property
    def refused(self) -> bool:
        return self.code != 0


class ConnectionLimits:
    """Caps on open connections (HTTP and WebSocket), in all and per client address (0: no cap)."""

    def __init__(self, total: int = 0, per_address: int = 0):
        self.total = total
        self.per_address = per_address
        self.open: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()   # accepted, request head not yet decided

    def may_wait(self, peer: str, per_peer: bool) -> bool:
        """Whether one more connection may wait for its head (bounds sockets that send nothing)."""
        if self.total and sum(self.waiting.values()) >= self.total:
            return False
        return not (per_peer and self.per_address and self.waiting[peer] >= self.per_address)

    def over(self, address: str) -> str | None:
        """Why one more connection from `address` would pass a cap, or None."""
        if self.total and sum(self.open.values()) >= self.total:
            return f"the server already has its maximum of {self.total} connections open; retry later"
        if self.per_address and self.open[address] >= self.per_address:
            return (f"{address} already has the maximum of {self.per_address} connections open; close some, "
                    "or ask the operator to raise --max-connections-per-ip")
        return None

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
                 limits: ConnectionLimits | None = None, origins: Origins | None = None,
                 ui_files: frozenset[str] = frozenset()):
        self.tokens = tokens
        self.proxies = proxies or TrustedProxies()
        self.limits = limits or ConnectionLimits()
        self.origins = origins or Origins(self.proxies)
        self.ui_files = ui_files
        self.refused: Counter[str] = Counter()
        self.admitted = 0
        self.websockets_open = 0
        self._ignored_proxies: set[str] = set()
        secret = secrets.token_urlsafe(32)
        self._probe = Principal(SELF_PROBE, frozenset({UPLOAD}))
        self._probe_tokens = Tokens({secret: self._probe})
        self.probe_headers = {"Authorization": f"Bearer {secret}"}

    def client(self, peer: str, forwarded: str | None) -> str:
        """The client's address: the peer, or behind a trusted proxy the one it names."""
        if forwarded and not self.proxies.trusts(peer) and peer not in self._ignored_proxies:
            self._ignored_proxies.add(peer)
            self._log.warn("ignoring X-Forwarded-For from {peer}, which is not a trusted proxy; if it is your "
                           "proxy, pass --trusted-proxy {peer} so that clients are told apart", peer=peer)
        return self.proxies.client_address(peer, forwarded)

    def principal(self, authorization: str | None, query_token: str | None) -> Principal | None:
        """Who the presented token stands for (everyone, without a token file); None when refused."""
        presented = presented_token(authorization, query_token)
        probe = self._probe_tokens.principal_of(presented)
        if self.tokens is None:
            return probe or ANYONE
        return probe or self.tokens.principal_of(presented)

    def is_probe(self, principal: Principal | None) -> bool:
        return principal is self._probe

    def requester_of(self, request) -> str | None:
        """The name of the token an HTTP request carries (e.g. a PAR's `:author`), as the gate decided."""
        decision = getattr(request, "decision", None)
        return decision.principal.name if decision is not None else None

    # -- the decision on a request head ----------------------------------------

    def decide(self, head: Head) -> Decision:
        """Repeated headers, token, body, Origin, content type and scope, in that order; the first failure is the
        answer."""
        address = self.client(head.peer, head.headers.get("x-forwarded-for"))
        params = head.params
        endpoint = endpoints.classify(head.method.upper(), head.path, params, head.upgrade, self.ui_files)
        principal = self.principal(head.headers.get("authorization"), (params.get("token") or [None])[-1])
        own = self.origins.own(head)

        def refuse(code: int, err: str, detail: str, why: str) -> Decision:
            self.refused[err] += 1
            self._log.info("refused {method} {path} from {peer}: {why}", method=head.method.decode("latin-1"),
                           path=head.path, peer=address, why=why)
            return Decision(principal, address, endpoint, code, err, detail, own)

        if head.repeated:
            names = ", ".join(head.repeated)
            return refuse(400, "bad-request", f"the request repeats the header {names}; send each once",
                          f"repeated {names}")
        if self.tokens is None and not self.origins.host_is_ours(head):
            host = self.origins.own(head) or head.headers.get("host")
            return refuse(403, "forbidden", (
                f"this lab runs without tokens and answers only requests for an IP address or localhost, not "
                f"{host!r} (a page could point that name at it); open it by address, give --allowed-origin "
                f"for the name, or run with --token-file"), f"Host {host}")

        public = endpoint in (endpoints.HEALTH, endpoints.UI_FILE)
        if principal is None and not public:
            presented = head.headers.get("authorization") or params.get("token")
            return refuse(401, "unauthorized", UNAUTHORIZED_DETAIL, "wrong token" if presented else "no token")
        too_big = body_refusal(head, endpoint.max_body)
        if too_big is not None:
            return refuse(*too_big, why=too_big[1])
        if (endpoint.websocket or head.method.upper() not in endpoints.READ_METHODS) and \
                not self.origins.allowed(head):
            # A WebSocket client is told `unauthorized`, as for a missing token (docs/protocol.md).
            return refuse(403, "unauthorized" if endpoint.websocket else "forbidden", self.origins.refusal(head),
                          f"Origin {head.headers.get('origin')}")
        if endpoint is endpoints.PAR_WRITE and not is_json(head.headers.get("content-type", "")):
            return refuse(415, "unsupported-media-type", "send the PAR as a JSON body with the header "
                          "`Content-Type: application/json`", "not JSON")
        if principal is not None and endpoint.scope is not None and not principal.may(endpoint.scope):
            return refuse(403, "forbidden", refusal_detail(endpoint.scope),
                          f"{principal.name} lacks the {endpoint.scope} scope")
        return Decision(principal or ANYONE_PUBLIC, address, endpoint, own_origin=own)

    def count(self, decision: Decision) -> Decision:
        """A connection's first head let through: count it against the caps (not the self-probe), or 503."""
        if decision.refused or self.is_probe(decision.principal):
            return decision
        over = self.limits.over(decision.address)
        if over is not None:
            self.refused["over-limit"] += 1
            self._log.warn("refused a connection from {peer}: {reason}", peer=decision.address, reason=over)
            return replace(decision, code=503, err="over-limit", detail=over)
        self.limits.opened(decision.address)
        return decision

    # -- WebSocket handshakes (Autobahn's ConnectionRequest), once the gate let them through ---

    def handshake_principal(self, request) -> Principal:
        """Who an admitted WebSocket acts for (the gate already refused anyone else)."""
        token = (request.params.get("token") or [None])[-1]
        return self.principal(request.headers.get("authorization"), token) or ANYONE_PUBLIC

    def admit(self, request, protocol) -> str:
        """Count an opening WebSocket until it closes; its client's address."""
        address = self.client(host_of(protocol.transport.getPeer()), request.headers.get("x-forwarded-for"))
        if not self.is_probe(self.handshake_principal(request)):
            self.admitted += 1
            self.websockets_open += 1
            protocol.lost.addBoth(self._closed)
        return address

    def _closed(self, result):
        self.websockets_open -= 1
        return result


ANYONE_PUBLIC = Principal(None, frozenset())  # a public file's reader with no token: may read nothing else


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def body_refusal(head: Head, limit: int) -> tuple[int, str, str] | None:
    """(code, err, detail) for a body the endpoint does not take, judged from the headers alone."""
    if head.headers.get("transfer-encoding", "identity").lower() != "identity":
        if not limit:
            return 413, "too-large", "this request takes no body"
        return 411, "length-required", "send the body with a Content-Length header (no chunked encoding)"
    length = head.headers.get("content-length", "0").strip()
    if not endpoints.is_decimal(length):
        return 400, "bad-request", "the Content-Length header is not a number"
    if int(length) > limit:
        return 413, "too-large", (f"the body is over {limit} bytes; shorten it" if limit
                                  else "this request takes no body")
    return None
