"""
The one WebSocket connection that carries every session, kept up forever.

`ClientService` reconnects with exponential backoff and jitter; Autobahn's
autoPing notices a dead link (a laptop that slept, a Wi-Fi drop) within
twice `PING_INTERVAL` seconds (a ping, then as long for its pong).  The server answers every message,
in order, so replies are matched to their callbacks by position (`Replies`).
"""

from __future__ import annotations

import random
from collections import deque

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger

from fulabd import packed

PING_INTERVAL = 20
HANDSHAKE_TIMEOUT = 15


SKIPPED = {"type": "error", "err": "unknown-type", "detail": "the server did not answer this message"}
PROBE = orjson.dumps({"type": "ping"})


class Replies:
    """What to do with each reply still due, in message order.

    An old server (the Clojure lab-ws) ignores messages it does not know, such
    as `resume`, without a reply.  A `ping` sent after the first messages
    tells: if its pong comes while earlier messages are unanswered, those were
    skipped; they are answered `unknown-type` here and the connection is
    marked `legacy`.
    """

    def __init__(self):
        self._due: deque = deque()
        self.legacy = False

    def expect(self, on_reply):
        self._due.append(on_reply)

    def probe(self):
        self._due.append(None)

    def deliver(self, reply: dict) -> bool:
        """Hand `reply` to the message it answers; False if no message was waiting for one."""
        if reply.get("type") == "pong":
            if None in self._due:
                while self._due[0] is not None:
                    self.legacy = True
                    self._due.popleft()(SKIPPED)
                self._due.popleft()
            return True
        while self._due and self._due[0] is None:
            self._due.popleft()
        if not self._due:
            return False
        self._due.popleft()(reply)
        return True

    def clear(self):
        self._due.clear()


class UploadClientProtocol(WebSocketClientProtocol):
    _log = Logger()

    def __init__(self):
        super().__init__()
        self._replies = Replies()
        self.opened = False
        self.packer = None  # set when the server agreed to packed frames (fulabd.packed)

    def onConnect(self, response):
        if self.factory.compress and packed.offered(response.headers.get(packed.HEADER.lower())):
            self.packer = packed.Packer()

    @property
    def legacy(self) -> bool:
        """The server ignores `resume` (and `events`): only `init` and `event` may be sent."""
        return self._replies.legacy

    def onOpen(self):
        self.opened = True
        self.factory.refused_handshakes = 0
        self.factory.uploads.connected(self)
        self._replies.probe()
        self.sendMessage(PROBE)

    def send(self, payload: bytes, on_reply, binary: bool = False):
        """Send one encoded message; `on_reply` gets the server's reply to it."""
        self._replies.expect(on_reply)
        self.sendMessage(payload, isBinary=binary)

    def onMessage(self, payload, isBinary):
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._log.error("the server sent something that is not JSON: {payload!r}", payload=payload[:200])
            return
        if not isinstance(reply, dict):
            return
        if reply.get("err") == "too-large":
            # Sent at once, ahead of the replies still due, and followed by a close: not a reply to match.
            self.factory.uploads.too_large(reply)
            return
        if not self._replies.deliver(reply):
            self._log.warn("unexpected message from the server: {reply}", reply=reply)
            if reply.get("type") == "error":
                self.factory.uploads.reporter.server_error(reply)

    def onClose(self, wasClean, code, reason):
        self._replies.clear()
        if self.opened:
            self.opened = False
            self.factory.uploads.disconnected(self, code, reason)
        else:
            self.factory.refused_handshakes += 1
            self.factory.uploads.reporter.connect_failed(reason or f"closed with code {code}")

    def close(self):
        self.sendClose(1000)


class UploadClientFactory(WebSocketClientFactory):
    protocol = UploadClientProtocol

    def __init__(self, url: str, uploads, token: str | None = None, ping_interval: float = PING_INTERVAL,
                 compress: bool = True, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if compress:
            headers[packed.HEADER] = packed.ENCODING
        super().__init__(url, headers=headers, **kw)
        self.uploads = uploads
        self.compress = compress
        self.refused_handshakes = 0
        self.setProtocolOptions(autoPingInterval=ping_interval, autoPingTimeout=ping_interval,
                                openHandshakeTimeout=HANDSHAKE_TIMEOUT, closeHandshakeTimeout=5,
                                maxMessagePayloadSize=0, maxFramePayloadSize=0, failByDrop=True)


def tls_options(host: str, cafile: str | None):
    """Verify the server against the system CAs, or the CAs in `cafile`: never unverified."""
    if cafile is None:
        return optionsForClientTLS(host)
    with open(cafile, "rb") as handle:
        pem = handle.read()
    marker = b"-----END CERTIFICATE-----"
    certificates = [Certificate.loadPEM(block + marker) for block in pem.split(marker) if b"-----BEGIN" in block]
    if not certificates:
        raise ValueError(f"{cafile} holds no PEM certificate")
    return optionsForClientTLS(host, trustRoot=trustRootFromCertificates(certificates))


def endpoint_for(reactor, url: str, cafile: str | None = None):
    secure, host, port, _resource, _path, _params = parse_url(url)
    endpoint = HostnameEndpoint(reactor, host, port, timeout=HANDSHAKE_TIMEOUT)
    if secure:
        endpoint = wrapClientTLS(tls_options(host, cafile), endpoint)
    elif cafile:
        raise ValueError("--cafile needs a wss:// URL")
    return endpoint


def connection_service(reactor, url: str, uploads, token: str | None = None, cafile: str | None = None,
                       max_delay: float = 30, ping_interval: float = PING_INTERVAL,
                       compress: bool = True) -> ClientService:
    """A service that keeps one upload connection open, reconnecting with backoff and jitter."""
    factory = UploadClientFactory(url, uploads, token=token, ping_interval=ping_interval, compress=compress,
                                  reactor=reactor)
    policy = backoffPolicy(initialDelay=0.5, maxDelay=max_delay, factor=2, jitter=random.random)

    def retry_delay(failed_attempts: int) -> float:
        """ClientService counts a TCP connection as success; a refused handshake (TLS, HTTP 401, 502) backs off too."""
        return policy(max(failed_attempts, factory.refused_handshakes))

    return ClientService(endpoint_for(reactor, url, cafile), factory, retryPolicy=retry_delay, clock=reactor)
