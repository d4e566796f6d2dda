"""
The supervisor owns one listening port: it listens, retries while the port
cannot be had, and every interval proves the port answers by doing a real
WebSocket handshake and ping against it, re-listening when it does not.  A
probe that passes logs nothing: an idle daemon's log stays quiet.
"""

from __future__ import annotations

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application import service
from twisted.internet import defer, endpoints, ssl, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger

from fulabd.web import UI_PATH

PROBE_PATH = "/fulab/lab/upload/ws"
PROBE_TIMEOUT = 5.0
RETRY_LOG_INTERVAL = 60.0  # a port that stays busy is said once a minute, not at every retry


class ListenerSupervisor(service.Service):
    _log = Logger()

    def __init__(self, description: str, endpoint, factory, clock, interval: float, probe_endpoint=None,
                 probe_headers=None):
        """
        `probe_endpoint(address)` returns a client endpoint that reaches the
        listening port (None disables the probe for that kind of port);
        `probe_headers` go with the probe's handshake (its credentials).
        """
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.clock = clock
        self.interval = interval
        self.probe_endpoint = probe_endpoint or loopback_endpoint
        self.probe_headers = probe_headers or {}
        self.port = None
        self._address = None
        self.restarts = 0
        self.failures = 0
        self.probes = 0
        self.last_error: str | None = None
        self._ever_listened = False
        self._failure_said_at = float("-inf")
        self._failures_unsaid = 0
        self._check_running = defer.succeed(None)
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self._log.failure("supervisor of {description} stopped", f, description=self.description))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        port, self.port = self.port, None
        if port is not None:
            return defer.maybeDeferred(port.stopListening)

    @property
    def address(self):
        return self._address if self.port is not None else None

    def _check(self) -> defer.Deferred:
        """Listen if not listening, else probe; the loop waits for this before the next interval."""
        self._check_running = self._listen() if self.port is None else self._probe()
        return self._check_running

    @defer.inlineCallbacks
    def _listen(self):
        try:
            port = yield self.endpoint.listen(self.factory)
        except Exception as e:
            self.failures += 1
            self.last_error = str(e)
            self._say_listen_failed(e)
            return
        self._failure_said_at = float("-inf")
        self._failures_unsaid = 0
        if not self.running:
            yield port.stopListening()
            return
        self.port = port
        self._address = port.getHost()
        if self._ever_listened:
            self.restarts += 1
        self._log.info("listening on {description} ({address})", description=self.description,
                       address=port.getHost())
        url = ui_url(self.description, self._address)
        if url is not None and not self._ever_listened:
            self._log.info("web UI at {url}", url=url)
        self._ever_listened = True

    def _say_listen_failed(self, error: Exception):
        now = self.clock.seconds()
        if now - self._failure_said_at < RETRY_LOG_INTERVAL:
            self._failures_unsaid += 1
            return
        since = f" ({self._failures_unsaid} more failed tries since the last message)" if self._failures_unsaid else ""
        self._failure_said_at, self._failures_unsaid = now, 0
        self._log.error("cannot listen on {description}: {error}; retrying every {interval} s, saying so once a "
                        "minute{since}", description=self.description, error=error, interval=self.interval,
                        since=since)

    @defer.inlineCallbacks
    def _probe(self):
        client = self.probe_endpoint(self._address)
        if client is None:
            return
        try:
            yield probe(client, self.clock, PROBE_PATH, headers=self.probe_headers)
            self.probes += 1
        except Exception as e:
            self.failures += 1
            self.last_error = f"self-probe failed: {e}"
            self._log.error("{description} did not answer a WebSocket ping ({error}); listening again",
                            description=self.description, error=e)
            port, self.port = self.port, None
            try:
                yield port.stopListening()
            except Exception as stop_error:
                self._log.warn("stopping the dead listener failed: {error}", error=stop_error)
            yield self._listen()

    def describe(self) -> dict:
        address = self.address
        return {"endpoint": self.description, "listening": self.port is not None,
                "port": getattr(address, "port", None), "restarts": self.restarts,
                "failures": self.failures, "probes": self.probes, "last-error": self.last_error}


def loopback_host(address) -> str | None:
    """The host to dial on this machine for a TCP port listening at `address` (None: not TCP)."""
    if isinstance(address, IPv6Address):
        return "::1" if address.host in ("::", "") else address.host
    if isinstance(address, IPv4Address):
        return "127.0.0.1" if address.host in ("0.0.0.0", "") else address.host
    return None


def ui_url(description: str, address) -> str | None:
    """The web UI's URL on this machine for a listener, e.g. `http://127.0.0.1:5056/fulab/lab/`."""
    host = loopback_host(address)
    if host is None:
        return None
    scheme = "https" if description.startswith(("ssl:", "tls:")) else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{address.port}{UI_PATH}"


def loopback_endpoint(address, reactor=None):
    """A client endpoint reaching a port listening at `address` from this machine."""
    if reactor is None:
        from twisted.internet import reactor
    if isinstance(address, IPv6Address):
        return endpoints.TCP6ClientEndpoint(reactor, loopback_host(address), address.port, timeout=PROBE_TIMEOUT)
    if isinstance(address, IPv4Address):
        return endpoints.TCP4ClientEndpoint(reactor, loopback_host(address), address.port, timeout=PROBE_TIMEOUT)
    if isinstance(address, UNIXAddress):
        return endpoints.UNIXClientEndpoint(reactor, address.name, timeout=PROBE_TIMEOUT)
    return None


def self_probe_endpoint(description: str, address, reactor=None):
    """
    The client endpoint the supervisor probes a listener with.  For TLS ports it
    does not verify the certificate: the probe asks whether our own socket
    answers, and the certificate names the public host, not the loopback
    address dialled; checking the certificate is `fulab doctor`'s job.
    """
    plain = loopback_endpoint(address, reactor)
    if plain is not None and description.startswith(("ssl:", "tls:")):
        return endpoints.wrapClientTLS(ssl.CertificateOptions(), plain)
    return plain


class _ProbeProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.sendMessage(b'{"type":"ping"}')

    def onMessage(self, payload, isBinary):
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            reply = {}
        if reply.get("type") == "pong" and not self.factory.result.called:
            self.factory.result.callback(True)
        self.sendClose(1000)

    def onClose(self, wasClean, code, reason):
        if not self.factory.result.called:
            self.factory.result.errback(ConnectionError(f"closed before pong (code {code}: {reason})"))


def probe(client_endpoint, clock, path: str, timeout: float = PROBE_TIMEOUT, headers=None) -> defer.Deferred:
    """Handshake and ping; fires True on pong, fails otherwise or after `timeout`."""
    factory = WebSocketClientFactory(f"ws://localhost{path}",
                                     headers={"User-Agent": "fulabd-self-probe", **(headers or {})})
    factory.protocol = _ProbeProtocol
    factory.noisy = False
    factory.result = defer.Deferred()
    connecting = client_endpoint.connect(factory)
    connecting.addErrback(lambda failure: factory.result.called or factory.result.errback(failure))
    factory.result.addTimeout(timeout, clock)

    def done(result):
        connecting.addCallback(lambda proto: proto.transport.loseConnection() if proto.transport else None)
        connecting.addErrback(lambda failure: None)
        return result

    return factory.result.addBoth(done)
