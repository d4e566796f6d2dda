"""
The one WebSocket connection that carries every session, kept up forever.

`ClientService` reconnects with exponential backoff and jitter; Autobahn's
autoPing notices a dead link (a laptop that slept, a Wi-Fi drop) within
`PING_INTERVAL + PING_TIMEOUT` seconds.  The server answers every message,
in order, so replies are matched to their callbacks by position.
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

PING_INTERVAL = 20
PING_TIMEOUT = 20
HANDSHAKE_TIMEOUT = 15


class UploadClientProtocol(WebSocketClientProtocol):
    _log = Logger()

    def __init__(self):
        super().__init__()
        self._replies: deque = deque()
        self.opened = False

    def onOpen(self):
        self.opened = True
        self.factory.uploads.connected(self)

    def send(self, message: dict, on_reply):
        """Send one message; `on_reply` gets the server's reply to it."""
        self._replies.append(on_reply)
        self.sendMessage(orjson.dumps(message))

    def onMessage(self, payload, isBinary):
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._log.error("the server sent something that is not JSON: {payload!r}", payload=payload[:200])
            return
        if not isinstance(reply, dict) or reply.get("type") == "pong":
            return
        if not self._replies:
            self._log.warn("unexpected message from the server: {reply}", reply=reply)
            if reply.get("type") == "error":
                self.factory.uploads.reporter.server_error(reply)
            return
        self._replies.popleft()(reply)

    def onClose(self, wasClean, code, reason):
        self._replies.clear()
        if self.opened:
            self.opened = False
            self.factory.uploads.disconnected(self, code, reason)
        else:
            self.factory.uploads.reporter.connect_failed(reason or f"closed with code {code}")

    def close(self):
        self.sendClose(1000)


class UploadClientFactory(WebSocketClientFactory):
    protocol = UploadClientProtocol

    def __init__(self, url: str, uploads, token: str | None = None, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(url, headers=headers, **kw)
        self.uploads = uploads
        self.setProtocolOptions(autoPingInterval=PING_INTERVAL, autoPingTimeout=PING_TIMEOUT,
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
                       max_delay: float = 30) -> ClientService:
    """A service that keeps one upload connection open, reconnecting with backoff and jitter."""
    factory = UploadClientFactory(url, uploads, token=token, reactor=reactor)
    return ClientService(endpoint_for(reactor, url, cafile), factory,
                         retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=max_delay, factor=2,
                                                   jitter=random.random),
                         clock=reactor)
