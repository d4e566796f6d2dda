"""
The one WebSocket connection that carries every session, kept up forever.

`ClientService` reconnects with exponential backoff and jitter; Autobahn's
autoPing notices a dead link (a laptop that slept, a Wi-Fi drop) within
twice `PING_INTERVAL` seconds (a ping, then as long for its pong).  The server answers every message,
in order, so replies are matched to their callbacks by position (`Replies`).
"""

from __future__ import annotations

import random
import re
from collections import deque

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError, DNSLookupError
from twisted.internet.error import TCPTimedOutError, TimeoutError
from twisted.logger import Logger

from fulabd import packed
from fulabd.frames import write_whole
from fulabd.uploader.defaults import PING_INTERVAL

HANDSHAKE_TIMEOUT = 15
MAX_INCOMING_BYTES = 1 << 20  # the server only sends acks and errors: anything bigger is a broken server


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
        self.confirmed = False  # the server answered the probe: this is a working connection
        self.refused = False    # the server took the WebSocket only to refuse it (token, Origin)
        self.packer = None  # set when the server agreed to packed frames (fulabd.packed)

    def onConnect(self, response):
        agreed = packed.encodings(response.headers.get(packed.HEADER.lower())) if self.factory.compress else []
        if packed.STREAMED in agreed or packed.ENCODING in agreed:
            self.packer = packed.Packer(stream=packed.STREAMED in agreed)

    @property
    def legacy(self) -> bool:
        """The server ignores `resume` (and `events`): only `init` and `event` may be sent."""
        return self._replies.legacy

    def onOpen(self):
        self.opened = True
        self.factory.uploads.connected(self)
        self._replies.probe()
        self.sendMessage(PROBE)

    def onMessageFrameBegin(self, length):
        """Incoming messages are capped here, not with Autobahn's options: those cap what we send too."""
        super().onMessageFrameBegin(length)
        if self.message_data_total_length > MAX_INCOMING_BYTES and not self.failedByMe:
            self._max_message_size_exceeded(self.message_data_total_length, MAX_INCOMING_BYTES,
                                            f"the server's message of {self.message_data_total_length} bytes "
                                            f"exceeds payload limit of {MAX_INCOMING_BYTES}")

    def send(self, payload: bytes, on_reply, binary: bool = False):
        """Send one encoded message; `on_reply` gets the server's reply to it."""
        self._replies.expect(on_reply)
        write_whole(self, [payload], binary)

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
        if reply.get("type") == "error" and reply.get("err") in (*REFUSALS, WRONG_PATH) and not self.confirmed:
            # Followed by a close: the connection failed, as an HTTP 401/403 (or 404) would have; said once.
            self.refused = True
            self.factory.refused_handshakes += 1
            self.factory.uploads.reporter.connect_failed(*(WRONG_PATH_ADVICE if reply["err"] == WRONG_PATH
                                                           else self.factory.refusal(reply["err"])))
            return
        if reply.get("type") == "pong" and not self.confirmed:
            self.confirmed = True
            self.factory.refused_handshakes = 0
            self.factory.uploads.confirmed()
        if not self._replies.deliver(reply):
            self._log.warn("unexpected message from the server: {reply}", reply=reply)
            if reply.get("type") == "error":
                self.factory.uploads.reporter.server_error(reply)

    def onClose(self, wasClean, code, reason):
        if code == self.CLOSE_STATUS_CODE_INVALID_PAYLOAD and self.packer is not None \
                and self.packer.stream:
            self.factory.without_stream()  # a server could not read our stream once: plain zstd from now on
        self._replies.clear()
        working = self.confirmed and not self.refused
        if self.opened:
            self.opened = False
            self.factory.uploads.disconnected(self, describe_close(wasClean, code, reason) if working else None)
        if working or self.refused:
            return
        self.factory.refused_handshakes += 1
        status = HTTP_STATUS.search(reason or "")
        if status and status["code"] in ("401", "403"):
            return self.factory.uploads.reporter.connect_failed(*self.factory.refusal(f"HTTP {status['code']}"))
        if status:
            return self.factory.uploads.reporter.connect_failed(
                f"the server answered HTTP {status['code']} {status['text']} instead of a WebSocket")
        self.factory.uploads.reporter.connect_failed(describe_close(wasClean, code, reason)[0])

    def close(self):
        self.sendClose(1000)


REFUSALS = ("unauthorized", "forbidden")
WRONG_PATH = "invalid-path"  # a WebSocket path of the server that is no upload endpoint
WRONG_PATH_ADVICE = ("the URL's path is not an upload endpoint (invalid-path)",
                     "use a URL ending in /fulab/lab/upload/ws")
HTTP_STATUS = re.compile(r"upgrade failed \[(?P<code>\d{3})\]: (?P<text>[^\")]*)")  # Autobahn's words for it
TLS_ERROR = re.compile(r"SSL error: (?P<why>.+?)(?: \(in [^)]*\))?\"?\)?$")  # and for a failed TLS handshake


def describe_close(was_clean: bool, code, reason: str | None) -> tuple[str, bool]:
    """Why a connection ended, in plain words, and whether the server ended it (it may be restarting)."""
    reason = reason or ""
    if "ping timeout" in reason:
        return "the server did not answer pings (a dead link, or the server is stuck)", False
    if "the server's message of" in reason:  # our own words, when we end it (`onMessageFrameData`)
        return (f"the server sent a message over the {MAX_INCOMING_BYTES} bytes the uploader accepts "
                "(a broken or hostile server)"), False
    if code == 1009:
        return f"the server refused a message of ours as larger than its --max-message-size ({reason})", False
    if code == 1001:
        return "the server is going away (shutting down or restarting)", True
    if tls := TLS_ERROR.search(reason):
        return f"the TLS handshake failed ({tls['why']})", False
    if not was_clean and "peer dropped the TCP connection" in reason:
        return "the server closed the connection without a WebSocket goodbye", True
    return reason or f"closed with code {code}", not was_clean


def describe_connect_error(failure) -> str:
    """A failed TCP (or TLS) connect, in plain words."""
    error = failure.value
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: nothing listens on that host and port (is the daemon running? the right port?)"
    if isinstance(error, DNSLookupError):
        return f"the host name does not resolve ({failure.getErrorMessage()})"
    if isinstance(error, (TimeoutError, TCPTimedOutError)):
        return "no answer from the host (timed out): a firewall, or a wrong address"
    return failure.getErrorMessage()


class ReportingEndpoint:
    """A client endpoint that tells the reporter why each connect attempt failed (ClientService only retries)."""

    def __init__(self, endpoint, reporter):
        self.endpoint = endpoint
        self.reporter = reporter

    def connect(self, factory):
        def failed(failure):
            if not failure.check(CancelledError, ConnectingCancelledError):  # we stopped trying: nothing to say
                self.reporter.connect_failed(describe_connect_error(failure))
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class UploadClientFactory(WebSocketClientFactory):
    protocol = UploadClientProtocol

    def __init__(self, url: str, uploads, token: str | None = None, ping_interval: float = PING_INTERVAL,
                 compress: bool = True, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if compress:
            headers[packed.HEADER] = f"{packed.STREAMED}, {packed.ENCODING}"
        super().__init__(url, headers=headers, **kw)
        self.uploads = uploads
        self.has_token = bool(token)
        self.compress = compress
        self.refused_handshakes = 0
        self.setProtocolOptions(autoPingInterval=ping_interval, autoPingTimeout=ping_interval,
                                openHandshakeTimeout=HANDSHAKE_TIMEOUT, closeHandshakeTimeout=5,
                                maxMessagePayloadSize=0, maxFramePayloadSize=0, failByDrop=True)

    def without_stream(self) -> None:
        """Offer only frames compressed on their own (after a server closed a connection over a zstd-stream
        frame it could not read: a bug on one side, which must not make every reconnect fail alike)."""
        if packed.HEADER in self.headers:
            self.headers[packed.HEADER] = packed.ENCODING

    def refusal(self, what: str) -> tuple[str, str]:
        """The reason and the advice for a server that refused this uploader's credentials."""
        if self.has_token:
            return (f"the server refused the token ({what})",
                    "check --token / FULAB_TOKEN, or ask the server's operator for a valid one")
        return f"the server needs a token ({what})", "pass --token or set FULAB_TOKEN"


def tls_options(host: str, cafile: str | None):
    """Verify the server against the system CAs, or the CAs in `cafile`: never unverified."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates  # wss:// only

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

    endpoint = ReportingEndpoint(endpoint_for(reactor, url, cafile), uploads.reporter)
    return ClientService(endpoint, factory, retryPolicy=retry_delay, clock=reactor)
