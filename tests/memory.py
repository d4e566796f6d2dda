"""
The daemon's protocols in memory, for the fast tier: the real site (dispatch,
gate, upload and viewer endpoints, listings) over a real `SessionStore` on
real files, on a `Clock`, with WebSocket clients connected to it through
`twisted.test.iosim` pumps instead of sockets.  Nothing waits: a test moves
bytes with `flush()`, time with `clock.advance()`, and the store's group
commits with `Commits`.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from fulabd import pars, web
from fulabd.access import Gate
from fulabd.catalog import Catalog, StoreSource
from fulabd.hub import Hub
from fulabd.listing import Listing
from fulabd.prices import PriceTable
from fulabd.store import SessionStore
from fulabd.stream import StreamFactory
from fulabd.summaries import Summaries
from fulabd.upload import UploadFactory

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 5056)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class Commits:
    """The store's thread jobs (fdatasync group commits, meta rewrites), run in the test's thread:
    at once, or, with `at_once=False`, only when the test calls `run()` (a commit still in flight)."""

    def __init__(self, at_once: bool = True):
        self.at_once = at_once
        self.queued: list[tuple[defer.Deferred, object, tuple]] = []

    def __call__(self, function, *args) -> defer.Deferred:
        if self.at_once:
            return defer.maybeDeferred(function, *args)
        done = defer.Deferred()
        self.queued.append((done, function, args))
        return done

    def run(self) -> int:
        """Run every queued job, and those they queue in turn; how many ran."""
        ran = 0
        while self.queued:
            done, function, args = self.queued.pop(0)
            done.callback(function(*args))
            ran += 1
        return ran


class Transport(iosim.FakeTransport):
    """An in-memory transport with a socket's backpressure: its streaming producer is paused while more
    than `buffer_size` bytes wait for the peer (as Twisted's TCP transport does), and resumed once they
    are read.  A peer that stops `reading` leaves them waiting, and a close (a FIN) waits behind them."""

    buffer_size = 64 * 1024
    reading = True
    producer_paused = False
    aborted = False
    closing = False  # closed by the server while bytes wait for a peer that does not read

    def loseConnection(self):
        """As TCP's FIN, the end follows the bytes buffered: a peer that does not read them does not see it."""
        if self.reading or not self.stream:
            super().loseConnection()
        else:
            self.closing = True

    def abortConnection(self):
        """At once, whatever is buffered (iosim's own waits for it, as for a close)."""
        self.aborted = True
        self.stream = []
        super().abortConnection()

    def write(self, data):
        super().write(data)
        if (self.producer is not None and self.streamingProducer and not self.producer_paused
                and sum(map(len, self.stream)) > self.buffer_size):
            self.producer_paused = True
            self.producer.pauseProducing()

    def getOutBuffer(self):
        if not self.reading:
            return None
        data = super().getOutBuffer()
        if self.closing:
            self.closing = False
            super().loseConnection()
        if self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


class Client(WebSocketClientProtocol):
    """A WebSocket client that keeps every message the server sends, decoded."""

    def __init__(self):
        super().__init__()
        self.received: list[dict] = []
        self.sizes: list[int] = []   # of each message received, in bytes
        self.stall_after: int | None = None
        self.opened = False
        self.close_code: int | None = None
        self.lab: Lab | None = None

    def onConnect(self, response):
        self.response_headers = response.headers

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.received.append(orjson.loads(payload))
        self.sizes.append(len(payload))
        if self.stall_after is not None and len(self.sizes) >= self.stall_after:
            self.stall_after = None
            self.lab.stall(self)

    def onClose(self, wasClean, code, reason):
        self.close_code = code

    def send(self, message: dict | str | bytes):
        """One text frame: a dict as JSON, a string or bytes as they are."""
        if isinstance(message, dict):
            message = orjson.dumps(message)
        elif isinstance(message, str):
            message = message.encode("utf-8")
        self.sendMessage(message)

    def take(self) -> list[dict]:
        """The messages received so far (and forget them)."""
        taken, self.received = self.received, []
        return taken

    def call(self, message: dict | str | bytes) -> dict:
        """Send one message and return the one reply it gets."""
        self.send(message)
        self.lab.flush()
        [reply] = self.take()
        return reply


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects to the in-memory site, as a TCP client endpoint connects to the daemon's port."""

    def __init__(self, lab: "Lab"):
        self.lab = lab

    def connect(self, factory) -> defer.Deferred:
        return defer.succeed(self.lab.connect(factory))


class Lab:
    """The daemon's site on `root`, in memory: wired as `tap.makeService` wires it, without the
    listeners (connect clients with `client` or `connect`), metrics and local sources."""

    def __init__(self, root, clock: Clock | None = None, commits: Commits | None = None,
                 max_message_size: int = 64 << 20, gate: Gate | None = None):
        self.root = Path(root)
        self.clock = clock or Clock()
        self.commits = commits or Commits()
        self.hub = Hub()
        self.store = SessionStore(str(root), clock=self.clock, hub=self.hub, run_in_thread=self.commits)
        self.store.startService()
        self.commits.run()  # the store's start-up load, which runs as a thread job too
        self.gate = gate or Gate()
        self.catalog = Catalog([StoreSource(self.store)])
        self.uploads = UploadFactory(self.store, clock=self.clock, max_message_size=max_message_size,
                                     admit=self.gate.admit, principal_of=self.gate.handshake_principal, reactor=self.clock)
        self.stream = StreamFactory(self.catalog, self.hub, clock=self.clock, admit=self.gate.admit,
                                    reactor=self.clock)
        self.summaries = Summaries(self.catalog, PriceTable.shipped(), clock=self.clock,
                                   run_in_thread=defer.maybeDeferred)  # files read at once, apart from commits
        self.summaries.startService()
        self.hub.listeners.append(self.summaries)
        dispatch = web.WebSocketDispatch(self.uploads, self.stream)
        web.build_tree(dispatch, Listing(self.store), self.clock, 3600, lambda: {"running": True},
                       session_child=lambda name: pars.session_child(self.store, name, self.summaries),
                       listing_extra=self.summaries.listing_fields)
        self.site = web.LabSite(dispatch, self.gate, reactor=self.clock)
        self.pumps: list[iosim.IOPump] = []
        self._previous_loop = txaio.config.loop
        txaio.config.loop = self.clock  # Autobahn's own timers (handshake, close, pings) run on the clock too

    def connect(self, factory, reading: bool = True):
        """A client protocol from `factory`, connected to the site (the handshake is done once `flush()`ed);
        one not `reading` reads nothing the server sends, its handshake answer included."""
        server = self.site.buildProtocol(CLIENT_ADDRESS)
        client = factory.buildProtocol(SERVER_ADDRESS)
        server_transport = Transport(server, True, SERVER_ADDRESS, CLIENT_ADDRESS)
        server_transport.reading = reading
        pump = iosim.connect(server, server_transport, client, Transport(client, False, CLIENT_ADDRESS, SERVER_ADDRESS),
                             greet=False, clock=self.clock)
        self.pumps.append(pump)
        self.flush()
        return client

    def client(self, path: str = "/fulab/lab/upload/ws", stall_after: int | None = None,
               headers: dict | None = None, reading: bool = True) -> Client:
        """A WebSocket client of `path` (with its query), open, that sent `headers` in its handshake.  With
        `stall_after`, it stops reading after that many messages (until `unstall`); not `reading`, at once."""
        factory = WebSocketClientFactory(f"ws://127.0.0.1:5056{path}", headers=headers, reactor=self.clock)

        def build():
            client = Client()
            client.lab, client.stall_after = self, stall_after
            return client

        factory.protocol = build
        return self.connect(factory, reading)

    def _server_transport(self, client) -> Transport:
        return next(pump.serverIO for pump in self.pumps if pump.client is client)

    def stall(self, client):
        """`client` stops reading: what the server sends it waits, and backs up."""
        self._server_transport(client).reading = False

    def unstall(self, client):
        """`client` reads again: what waited is delivered."""
        self._server_transport(client).reading = True
        self.flush()

    def client_endpoint(self):
        """A client endpoint whose connections reach the site in memory (for the supervisor's probe)."""
        return MemoryEndpoint(self)

    def flush(self):
        """Move every byte in flight, both ways, on every connection, until nothing moves."""
        while any([pump.pump() for pump in self.pumps]):
            pass
        self.pumps = [pump for pump in self.pumps if not (pump.clientIO.disconnected and pump.serverIO.disconnected)]

    def close(self):
        """Stop the store (it writes what is due) and give Autobahn its reactor back; once is enough."""
        if not self.store.running:
            return
        txaio.config.loop = self._previous_loop
        self.commits.at_once = True
        self.commits.run()
        self.store.stopService()
