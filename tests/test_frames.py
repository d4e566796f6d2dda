"""
Whole frames (fulabd/frames.py) against Autobahn's own reading of them: the
same bytes, cut into reads anywhere, get the same replies, the same close
code, the same traffic counts and the same stored lines from the upload
protocol as from one whose frames Autobahn reads, fragments, control frames,
bad UTF-8 and protocol errors included.
"""

import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import pytest_twisted
import txaio
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given, settings
from hypothesis import strategies as st
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fulabd.frames import data_frame, frame_header, unmask, write_now, xor_large, xor_small, xor_with_autobahn
from fulabd.upload import UploadProtocol
from tests.fixtures import close_code, frame, parse_frames
from tests.test_budget import MB, upload_connections


LIMIT = 100_000  # bytes a message may have here


class AutobahnFrames(UploadProtocol):
    """The upload protocol with every frame read by Autobahn: the reference `WholeFrames` must agree with."""

    def processData(self):
        return False if self.held else WebSocketServerProtocol.processData(self)

    def send_texts(self, payloads):
        for payload in payloads:
            self.sendMessage(payload)


def text(message) -> bytes:
    return frame(0x1, orjson.dumps(message))


def init(session_id: str, lines: list[str]) -> bytes:
    return text({"type": "init", "session-id": session_id, "events": lines})


def fragmented(message: bytes, cut: int, ping_between: bool) -> bytes:
    head, tail = message[:cut], message[cut:]
    return frame(0x1, head, fin=False) + (frame(0x9, b"between") if ping_between else b"") + frame(0x0, tail)


line = st.text(max_size=30).map(lambda words: orjson.dumps({"type": "user", "text": words}).decode())
session_id = st.sampled_from(["a", "b"])
ordinary = st.one_of(
    st.builds(init, session_id, st.lists(line, min_size=1, max_size=4)),
    st.builds(init, session_id, st.sampled_from([200, 70_000]).map(lambda size: ["x" * size])),
    st.just(text({"type": "ping"})),
    st.just(frame(0x1, b"{not json")),
    st.just(frame(0x1, b"")),
    st.just(frame(0x2, b'{"type":"ping"}')),
    st.just(frame(0x9, b"ping")),
    st.builds(fragmented, st.just(orjson.dumps({"type": "init", "session-id": "c", "events": ["{}"]})),
              st.integers(0, 40), st.booleans()),
)
fatal = st.sampled_from([
    frame(0x1, b'{"type":"ping","x":"\xff"}'),               # invalid UTF-8: 1007
    frame(0x1, b'{"type":"ping","x":"\xe2\x82"}'),            # a code point cut short: 1007
    b"\x81\x0f" + b'{"type":"ping"}',                         # unmasked: 1002
    bytes([0xC1]) + frame(0x1, b'{"type":"ping"}')[1:],       # RSV1 with nothing negotiated: 1002
    b"\x81\xfe\x00\x05" + b"mask" + b"12345",                 # length 5 in the 16-bit form: 1002
    frame(0x1, b"x" * (LIMIT + 1)),                           # over the limit: too-large, then 1009
])


@contextmanager
def clocked():
    """A clock, which Autobahn's own timers (close handshake, pings) use too while it lasts."""
    clock, previous = Clock(), txaio.config.loop
    txaio.config.loop = clock
    try:
        yield clock
    finally:
        txaio.config.loop = previous


def run(protocol, wire: bytes, cuts: list[int], limits: tuple[int, int] = (LIMIT, LIMIT)) -> tuple:
    """Feed `wire` to one upload connection in reads cut at `cuts`, under (frame, message) size `limits`: what
    it answered, whether it ended the connection, what it stored and counted."""
    with tempfile.TemporaryDirectory() as root, clocked() as clock:
        _, store, factory, [(server, transport)] = upload_connections(Path(root), 1, 64 * MB, protocol, clock)
        server.maxFramePayloadSize, server.maxMessagePayloadSize = limits
        for start, end in zip([0, *cuts], [*cuts, len(wire)]):
            server.dataReceived(wire[start:end])
            clock.advance(0)
        clock.advance(0.1)
        ended = transport.disconnecting
        server.connectionLost(Failure(ConnectionDone()))
        frames = parse_frames(transport.value())
        stats = server.trafficStats
        stored = {path.name: path.read_bytes() for path in sorted(Path(root, "remote").glob("*.jsonl"))}
        store.stopService()
    return ([payload for opcode, payload in frames if opcode == 0x1], close_code(frames), ended, stored,
            (stats.incomingWebSocketFrames, stats.incomingWebSocketMessages, stats.incomingOctetsAppLevel))


@settings(max_examples=80, deadline=None)
@given(st.lists(ordinary, max_size=8), st.one_of(st.none(), fatal), st.booleans(),
       st.sampled_from([(LIMIT, LIMIT), (LIMIT, 0), (0, LIMIT)]), st.data())
def test_whole_frames_answer_as_autobahn_does_however_the_bytes_are_cut(messages, last, closes, limits, data):
    """Then the client's close, if `closes`: what is buffered behind a bad frame is read as Autobahn reads it."""
    wire = b"".join(messages) + (last or b"") + (frame(0x8, b"\x03\xe8") if closes else b"")
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=12))))
    mine, reference = run(UploadProtocol, wire, cuts, limits), run(AutobahnFrames, wire, cuts, limits)
    assert mine[:4] == reference[:4]
    assert mine[4] == reference[4] or last is not None, "traffic counts (a bad frame is counted as far as read)"
    if len(wire) < 20_000:
        trickled = run(UploadProtocol, wire, list(range(1, len(wire))), limits)
        assert trickled[:2] == mine[:2] and trickled[3] == mine[3], "byte by byte"
        assert trickled[2::2] == mine[2::2] or last is not None, "where Autobahn reads a bad frame depends on the cuts"


def test_a_run_of_frames_in_one_read_is_answered_in_order_and_stored():
    wire = b"".join(init("s", [orjson.dumps({"n": n}).decode()]) for n in range(50)) + text({"type": "ping"})
    replies, code, _, stored, (frames, messages, _) = run(UploadProtocol, wire, [])
    assert [(orjson.loads(reply).get("err") or orjson.loads(reply)["type"]) for reply in replies] == \
        ["ack"] + ["conflict"] * 49 + ["pong"]
    assert code is None and frames == messages == 51 and stored == {"s.jsonl": b'{"n":0}\n'}


def test_bad_utf8_closes_with_1007_ends_the_connection_and_nothing_after_it_is_read():
    wire = init("s", ["{}"]) + frame(0x1, b'{"a":"\xff"}') + init("t", ["{}"])
    replies, code, ended, stored, _ = run(UploadProtocol, wire, [])
    assert code == 1007 and ended and len(replies) == 1 and list(stored) == ["s.jsonl"]


class RaisesOnMarker(UploadProtocol):
    """An upload protocol whose handling of one message fails as a bug would."""

    def onMessage(self, payload, isBinary):
        if payload == b'"marker"':
            raise RuntimeError("a bug in handling this message")
        super().onMessage(payload, isBinary)


def test_a_message_whose_handling_raises_does_not_bring_back_the_ones_before_it():
    with tempfile.TemporaryDirectory() as root, clocked() as clock:
        _, store, _, [(server, transport)] = upload_connections(Path(root), 1, 64 * MB, RaisesOnMarker, clock)
        ping = text({"type": "ping"})
        with pytest.raises(RuntimeError):
            server.dataReceived(ping + frame(0x1, b'"marker"') + ping)
        assert server.data == ping, "the frames read are gone from the buffer, the one after is left"
        server.consumeData()  # as a later read would
        clock.advance(0)
        assert [orjson.loads(payload)["type"] for _, payload in parse_frames(transport.value())] == ["pong", "pong"]
        store.stopService()


def test_a_held_whole_frame_on_a_connection_that_begins_closing_asks_the_budget_once():
    with tempfile.TemporaryDirectory() as root, clocked() as clock:
        _, store, factory, [(first, _), (second, wire)] = upload_connections(Path(root), 2, MB, clock=clock)
        asked, ask = [], factory.budget.frame
        factory.budget.frame = lambda reader, length, *more: (
            reader is second and asked.append(length)) or ask(reader, length, *more)
        big = init("first", ["x" * 990_000])
        first.dataReceived(big[:16])                       # its frame takes nearly all the budget
        held = init("second", ["y" * 300_000])
        second.dataReceived(held)
        assert second.held
        second.sendClose(1000, "the server is stopping")  # closing while its whole frame waits
        first.dataReceived(big[16:])
        clock.advance(0.1)                                 # first is acked: second's frame is let in
        second.dataReceived(frame(0x8, b"\x03\xe8"))        # its client answers the close
        assert asked == [frame_header(held)[1]] and factory.budget.reserved == 0
        store.stopService()


@given(st.binary(max_size=5000), st.binary(min_size=4, max_size=4))
def test_every_unmasking_is_autobahns_xor(payload, mask):
    expected = create_xor_masker(mask, len(payload)).process(payload)
    assert unmask(payload, mask) == xor_small(payload, mask) == xor_large(payload, mask) == expected
    assert xor_with_autobahn(payload, mask) == expected, "the fallback where the compiled loop is missing"


def test_headers_left_to_autobahn():
    assert frame_header(frame(0x1, b"x" * 200)) == (8, 200)
    assert frame_header(frame(0x2, b"x" * 70_000)) == (14, 70_000)
    assert frame_header(frame(0x1, b"x", fin=False)) is None, "a fragment"
    assert frame_header(frame(0x9, b"x")) is None, "a control frame"
    assert frame_header(frame(0x1, b"x" * 200)[:7]) is None, "its length not yet read"
    assert frame_header(b"\x81\xfe\x00\x05mask12345") is None, "not minimally encoded"
    assert frame_header(b"\x81\x05hello") is None, "unmasked"


def test_a_frame_arriving_over_many_reads_asks_the_budget_once_and_is_not_kept_whole():
    with tempfile.TemporaryDirectory() as root, clocked() as clock:
        _, store, factory, [(server, transport)] = upload_connections(Path(root), 1, 64 * MB, clock=clock)
        wire = init("s", ["x" * 50_000])
        for start in range(0, len(wire) - 1000, 1000):
            server.dataReceived(wire[start:start + 1000])
            assert factory.budget.reserved == len(wire) - 8, "the payload's bytes, asked for once"
            assert len(server.data) < 1000, "read as it comes: a buffer that grew would be copied at every read"
        server.dataReceived(wire[start + 1000:])
        clock.advance(0.1)
        assert factory.budget.reserved == 0 and orjson.loads(parse_frames(transport.value())[0][1])["count"] == 1
        store.stopService()


def test_replies_are_framed_as_autobahn_frames_them():
    with tempfile.TemporaryDirectory() as root, clocked() as clock:
        _, store, _, [(mine, mine_wire), (reference, reference_wire)] = upload_connections(Path(root), 2, MB,
                                                                                            clock=clock)
        payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536]
        mine.send_texts(payloads)
        for payload in payloads:
            reference.sendMessage(payload)
        assert mine_wire.value() == reference_wire.value()
        stats = [(each.trafficStats.outgoingWebSocketMessages, each.trafficStats.outgoingWebSocketFrames,
                  each.trafficStats.outgoingOctetsAppLevel, each.trafficStats.outgoingOctetsWireLevel)
                 for each in (mine, reference)]
        assert stats[0] == stats[1]
        store.stopService()


@given(st.binary(max_size=70_000), st.booleans(), st.binary(min_size=4, max_size=4))
def test_a_masked_frame_of_ours_reads_back_as_its_message(payload, binary, mask):
    wire = data_frame(payload, binary, mask)
    header, length = frame_header(wire)
    assert wire[0] == (0x82 if binary else 0x81) and length == len(payload) == len(wire) - header
    assert unmask(wire[header:], wire[header - 4:header]) == payload


@pytest_twisted.inlineCallbacks
def test_write_now_sends_before_the_reactor_turns_and_keeps_the_order_of_what_waits():
    """A real loopback TCP connection: bytes written by `write_now` with nothing waiting are readable by the
    peer while the reactor is held; once Twisted holds bytes to send, what follows goes after them."""
    connected = defer.Deferred()

    class Server(protocol.Protocol):
        def connectionMade(self):
            connected.callback(self.transport)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=30)
    transport = None
    try:
        transport = yield connected
        write_now(transport, b"first ")
        assert peer.recv(100) == b"first "  # a blocking read in the reactor's thread: it cannot have sent them
        transport.write(b"waiting ")
        write_now(transport, b"last")
        received = b""
        while len(received) < len(b"waiting last"):
            received += yield threads.deferToThread(peer.recv, 100)
        assert received == b"waiting last"
    finally:
        peer.close()
        if transport is not None:
            transport.loseConnection()
        yield port.stopListening()
