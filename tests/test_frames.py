"""
Whole frames (fulabd/frames.py) against Autobahn's own reading of them: the
same bytes, cut into reads anywhere, get the same replies, the same close
code, the same traffic counts and the same stored lines from the upload
protocol as from one whose frames Autobahn reads, fragments, control frames,
bad UTF-8 and protocol errors included.
"""

import tempfile
from contextlib import contextmanager
from pathlib import Path

import orjson
import txaio
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given, settings
from hypothesis import strategies as st
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fulabd.frames import data_frame, frame_header, unmask, xor_large, xor_small, xor_with_autobahn
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


def run(protocol, wire: bytes, cuts: list[int]) -> tuple:
    """Feed `wire` to one upload connection in reads cut at `cuts`; what it answered and stored."""
    with tempfile.TemporaryDirectory() as root, clocked() as clock:
        _, store, factory, [(server, transport)] = upload_connections(Path(root), 1, 64 * MB, protocol, clock)
        server.maxMessagePayloadSize = server.maxFramePayloadSize = LIMIT
        transport.registerProducer(server, True)  # as twisted.web's channel is: Autobahn unregisters it to drop
        for start, end in zip([0, *cuts], [*cuts, len(wire)]):
            server.dataReceived(wire[start:end])
            clock.advance(0)
        clock.advance(0.1)
        server.connectionLost(Failure(ConnectionDone()))
        frames = parse_frames(transport.value())
        stats = server.trafficStats
        stored = {path.name: path.read_bytes() for path in sorted(Path(root, "remote").glob("*.jsonl"))}
        store.stopService()
    return ([payload for opcode, payload in frames if opcode == 0x1], close_code(frames), stored,
            (stats.incomingWebSocketFrames, stats.incomingWebSocketMessages, stats.incomingOctetsAppLevel))


@settings(max_examples=60, deadline=None)
@given(st.lists(ordinary, max_size=8), st.one_of(st.none(), fatal), st.data())
def test_whole_frames_answer_as_autobahn_does_however_the_bytes_are_cut(messages, last, data):
    wire = b"".join(messages) + (last or b"")
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=12))))
    mine, reference = run(UploadProtocol, wire, cuts), run(AutobahnFrames, wire, cuts)
    assert mine[:3] == reference[:3]
    assert mine[3] == reference[3] or last is not None, "traffic counts (a bad frame is counted as far as read)"
    if len(wire) < 20_000:
        trickled = run(UploadProtocol, wire, list(range(1, len(wire))))
        assert trickled[:3] == mine[:3] and (trickled[3] == mine[3] or last is not None), "byte by byte"


def test_a_run_of_frames_in_one_read_is_answered_in_order_and_stored():
    wire = b"".join(init("s", [orjson.dumps({"n": n}).decode()]) for n in range(50)) + text({"type": "ping"})
    replies, code, stored, (frames, messages, _) = run(UploadProtocol, wire, [])
    assert [(orjson.loads(reply).get("err") or orjson.loads(reply)["type"]) for reply in replies] == \
        ["ack"] + ["conflict"] * 49 + ["pong"]
    assert code is None and frames == messages == 51 and stored == {"s.jsonl": b'{"n":0}\n'}


def test_bad_utf8_closes_with_1007_and_nothing_after_it_is_read():
    wire = init("s", ["{}"]) + frame(0x1, b'{"a":"\xff"}') + init("t", ["{}"])
    replies, code, stored, _ = run(UploadProtocol, wire, [])
    assert code == 1007 and len(replies) == 1 and list(stored) == ["s.jsonl"]


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
