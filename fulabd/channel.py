"""
The twisted.web side of the gate: each connection is counted from accept to
close, its request head must arrive within the handshake timeout, and the
`Gate` decides on the head alone, before Twisted reads a byte of the body
(twisted.web would otherwise spool it to a temporary file before any
resource could refuse it).

A refused request is answered without its body being read, and its
connection is closed.
"""

from __future__ import annotations

import io

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import http, server
from twisted.web.resource import UnsupportedMethod

from fulabd.access import SINGULAR_HEADERS, Head
from fulabd.netaddr import host_of

# On every response: the UI runs no inline script or style and loads nothing from elsewhere,
# no page may frame the lab, and no URL (which may hold ?token=) leaks in a Referer.
SECURITY_HEADERS = {
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cross-origin-resource-policy": b"same-origin",
}


def content_security_policy(origin: str | None) -> bytes:
    """The UI's CSP: itself only; WebSockets to the daemon's own host (older browsers' `connect-src 'self'`
    does not cover ws:), as the client reached it (behind a trusted proxy, its X-Forwarded-Host)."""
    host = origin.partition("://")[2].encode() if origin else b""
    sockets = b" ws://" + host + b" wss://" + host if host else b""
    return (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'" + sockets + b"; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


TLS_HANDSHAKE = b"\x16"  # the first byte a TLS client sends (a handshake record)
PLAIN_PORT_ANSWER = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n"
                     b"This port speaks plain HTTP: use ws:// or http:// (or the port with TLS).\n")


class GatedRequest(server.Request):
    """A request the gate decided on at header time (`decision`), whose HEAD gets headers only."""

    _parsePOSTFormSubmission = False   # no form encodings: the only body is a PAR's JSON
    decision = None

    def gotLength(self, length):
        """The gate bounded the body (at most a PAR's 1 MiB): keep it in memory, never in a temporary file."""
        self.content = io.BytesIO()

    @property
    def principal(self):
        return self.decision.principal

    def process(self):
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        self.setHeader(b"content-security-policy", content_security_policy(self.decision.own_origin))
        if self.path == b"*" and self.decision.refused:
            self.path = b"/*"  # twisted.web answers `OPTIONS *` itself, before any resource: this one the gate refused
        super().process()

    def render(self, resrc):
        """A HEAD is rendered as a GET whose body is dropped, without Twisted's warning (which logs the URI)."""
        if self.method != b"HEAD":
            channel, transport = self.channel, self.channel.transport  # a finished request forgets its channel
            super().render(resrc)
            if transport is not None and channel.transport is None:  # Autobahn took the socket over
                channel.upgraded(transport)
            return
        self.method = b"GET"
        try:
            body = resrc.render(self)
        except UnsupportedMethod:
            self.setResponseCode(http.NOT_ALLOWED)
            body = b""
        finally:
            self.method = b"HEAD"
        if body is server.NOT_DONE_YET:
            return
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(b"")
        self.finish()

    def __repr__(self):
        """No query string: it may hold a token."""
        path = (self.uri or b"").split(b"?", 1)[0]
        return f"<{type(self).__name__} {self.method!r} {path!r}>"


class GatedChannel(http.HTTPChannel):
    """An HTTP connection whose every request head goes to the site's gate before anything else.

    The site counts it from accept to close, also once it became a WebSocket: Autobahn's
    WebSocketResource then takes the socket over, and this channel hears no more of it, so the
    count is released when the WebSocket protocol closes.
    """

    _log = Logger()
    _deadline = None  # for the request's head, then its body: each must be all in within --handshake-timeout
    _first = True  # no byte of the connection read yet
    waiting_peer: str | None = None   # counted as waiting for its first head, from this peer
    address: str | None = None        # counted as open for this client, once its first head was let through

    def connectionMade(self):
        super().connectionMade()
        if not self.site.accepted(self):
            self.transport.abortConnection()
            return
        self._await("head")

    def dataReceived(self, data: bytes):
        if self._first and data[:1] == TLS_HANDSHAKE:
            return self._tls_on_plain_port()
        self._first = False
        super().dataReceived(data)

    def _tls_on_plain_port(self):
        """A TLS client (a wss:// or https:// URL) on this plain port: told at once, not left to time out.
        No HTTP request begins with this byte; the answer is plain HTTP, which its TLS layer reports
        as not TLS ("wrong version number")."""
        self._first = False
        self._stop_the_clock()
        self.site.gate.refused["tls-on-plain-port"] += 1
        self._log.info("dropped a connection from {peer}: it began a TLS handshake, and this port is plain HTTP "
                       "(its URL should be ws:// or http://)", peer=host_of(self.transport.getPeer()))
        self.transport.write(PLAIN_PORT_ANSWER)
        self.transport.loseConnection()

    def _await(self, part: str):
        """Start the clock on the request's `part`: a head or a body trickled a byte at a time would otherwise
        hold the connection, and its place under the caps, for ever."""
        if self.site.head_timeout:
            self._deadline = self.callLater(self.site.head_timeout, self._too_slow, part)

    def _too_slow(self, part: str):
        self._deadline = None
        self.site.gate.refused[f"slow-{part}"] += 1
        self._log.info("dropped a connection from {peer}: no complete request {part} within {timeout} s",
                       peer=host_of(self.transport.getPeer()), part=part, timeout=self.site.head_timeout)
        self.transport.loseConnection()

    def _stop_the_clock(self):
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def allContentReceived(self):
        self._stop_the_clock()
        super().allContentReceived()

    def allHeadersReceived(self):
        self._stop_the_clock()
        request = self.requests[-1]
        decision = self.site.decide(self, request, self._command, self._path)
        request.decision = decision
        if not decision.refused:
            super().allHeadersReceived()
            if self.length:  # a body follows (only a PAR POST's is let through): it has as long as a head had
                self._await("body")
            return
        # Answer from the headers alone: no body is read (length 0 makes the channel process the request
        # at once), no 100-continue is sent, and the connection closes after the answer.
        self.persistent = False
        request.gotLength(0)
        self.length = 0
        self._transferDecoder = None

    def requestDone(self, request):
        super().requestDone(request)
        if self.persistent and self.transport is not None and not self.transport.disconnecting:
            self._await("head")

    def upgraded(self, transport):
        """The socket now belongs to a WebSocket protocol: release the count once its connection is gone."""
        protocol = transport.wrappedProtocol if isinstance(transport, ProtocolWrapper) else transport.protocol
        protocol.lost.addBoth(self._released)

    def _released(self, result):
        self.site.released(self)
        return result

    def connectionLost(self, reason):
        self._stop_the_clock()
        self.site.released(self)
        super().connectionLost(reason)


def head_of(channel, request, command: bytes, uri: bytes) -> Head:
    raw = [(name.decode("latin-1").lower(), values) for name, values in request.requestHeaders.getAllRawHeaders()]
    headers = {name: values[0].decode("latin-1") for name, values in raw}
    repeated = tuple(sorted(name for name, values in raw if len(values) > 1 and name in SINGULAR_HEADERS))
    return Head(command, uri, headers, host_of(channel.transport.getPeer()), channel.isSecure(), repeated)
