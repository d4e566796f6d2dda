"""
Packed uploads (fulabd/packed.py): binary frames of zstd-compressed raw lines,
agreed in the handshake; old clients and old servers never see one.
"""

import struct
import tracemalloc

import orjson
import pytest
import zstandard
from websockets.sync.client import connect

from fulabd import packed
from fulabd.messages import BAD_MESSAGE, TOO_LARGE, UNKNOWN_TYPE, ProtocolError
from tests.fixtures import Daemon, Uploader, sample_files

UPLOAD = "/fulab/lab/upload/ws"


def test_lines_travel_byte_for_byte():
    lines = [b'{"a":1}', b"", "caf\u00e9 \u2603".encode(), b"\xff\xfe not UTF-8", b"x" * 100_000]
    message = packed.Unpacker().decode(packed.Packer().encode({"type": "events", "session-id": "s", "seq": 7}, lines), 1 << 20)
    assert (message.kind, message.session_id, message.seq, message.lines) == ("events", "s", 7, lines)


def test_an_init_keeps_its_metadata():
    payload = packed.Packer().encode({"type": "init", "session-id": "s", "project": "p", "cwd": "/w"}, [b"{}"])
    message = packed.Unpacker().decode(payload, 1 << 20)
    assert (message.kind, message.seq, message.meta, message.lines) == ("init", 0, {"project": "p", "cwd": "/w"},
                                                                        [b"{}"])


@pytest.mark.parametrize("payload, code", [
    (b'{"type":"events","session-id":"s","seq":0}', BAD_MESSAGE),
    (b'{"type":"events","session-id":"s","seq":0}\nnot zstd', BAD_MESSAGE),
    (b'{"type":"par","session-id":"s","par":{}}\n', UNKNOWN_TYPE),
    (b'{"type":"events","session-id":"s","seq":0,"events":["x"]}\n', BAD_MESSAGE),
    (b'{"type":"events","session-id":"s","seq":0}\n' + zstandard.ZstdCompressor().compress(b"no newline"),
     BAD_MESSAGE),
])
def test_malformed_frames_get_a_documented_error(payload, code):
    with pytest.raises(ProtocolError) as refused:
        packed.Unpacker().decode(payload, 1 << 20)
    assert refused.value.code == code


def test_the_header_value_is_a_list():
    assert packed.encodings("gzip, ZSTD-stream , zstd") == ["gzip", "zstd-stream", "zstd"]
    assert packed.encodings(None) == [] and packed.encodings(" , ") == []


@pytest.mark.slow
def test_the_daemon_agrees_only_when_asked(daemon):
    with connect(daemon.url + UPLOAD, additional_headers={packed.HEADER: "zstd"}) as asking:
        assert asking.response.headers.get(packed.HEADER) == "zstd"
        asking.send(packed.Packer().encode({"type": "init", "session-id": "p"}, [b'{"n":0}', b'{"n":1}']))
        assert orjson.loads(asking.recv(30)) == {"type": "ack", "session-id": "p", "count": 2, "appended": 2,
                                                 "dedup": False}
    with connect(daemon.url + UPLOAD, additional_headers={packed.HEADER: "zstd-stream, zstd"}) as newer:
        assert newer.response.headers.get(packed.HEADER) == "zstd-stream"
        packer = packed.Packer(stream=True)
        for seq in (2, 3):
            newer.send(packer.encode({"type": "events", "session-id": "p", "seq": seq}, [b'{"n":%d}' % seq]))
            assert orjson.loads(newer.recv(30))["count"] == seq + 1
    with connect(daemon.url + UPLOAD) as old:
        assert packed.HEADER not in old.response.headers
        old.send(packed.Packer().encode({"type": "events", "session-id": "p", "seq": 4}, [b"{}"]))
        assert orjson.loads(old.recv(30))["err"] == "bad-json"
    assert (daemon.root / "p.jsonl").read_bytes() == b"".join(b'{"n":%d}\n' % n for n in range(4))


@pytest.mark.slow
def test_a_bomb_sent_to_the_daemon_is_too_large_and_costs_no_memory(tmp_path):
    server = Daemon(tmp_path / "remote", "--max-message-size", str(1 << 20)).start()
    try:
        before = server.rss()
        bomb = orjson.dumps({"type": "events", "session-id": "b", "seq": 0}) + b"\n" + \
            zstandard.ZstdCompressor(level=19).compress(b"{}\n" * (300 << 20))
        with connect(server.url + UPLOAD, additional_headers={packed.HEADER: "zstd"}) as client:
            client.send(bomb)
            reply = orjson.loads(client.recv(30))
        assert reply["err"] == "too-large" and reply["limit"] == 1 << 20
        assert not (server.root / "b.jsonl").exists()
        assert server.rss() - before < 64 << 20
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("compress", [True, False], ids=["packed", "text"])
def test_the_uploader_stores_every_sample_byte_identical(daemon, tmp_path, compress):
    folder = tmp_path / "sessions"
    folder.mkdir()
    for path in sample_files():
        (folder / path.name).write_bytes(path.read_bytes())
    odd = folder / "odd.jsonl"
    odd.write_bytes(b'{"type":"user"}\n{"bad":"\xff\xfe"}\n')
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(folder), "--backfill", "--once", "--quiet",
                        *([] if compress else ["--no-compress"])).start()
    assert uploader.wait(120) == 0, "\n".join(uploader.output)
    stored = daemon.root / "odd.jsonl"
    assert (stored.read_bytes() == odd.read_bytes()) is compress  # only packed frames carry invalid UTF-8 exactly
    for path in sample_files():
        assert any(copy.read_bytes() == path.read_bytes() for copy in daemon.root.glob("*.jsonl")), path.name


# -- zstd-stream: a connection's frames are the pieces of one zstd stream ------------


def batches() -> list[list[bytes]]:
    lines = [line.encode() for path in sample_files() for line in path.read_text().splitlines()]
    return [lines[start:start + 40] for start in range(0, len(lines), 40)]


def still() -> float:
    """A clock that does not move: a packer on it keeps its level, however loaded the machine is."""
    return 0.0


def test_stream_frames_round_trip_in_order_and_are_smaller():
    streamed, alone = packed.Packer(stream=True, clock=still), packed.Packer(clock=still)
    unpacker = packed.Unpacker(stream=True)
    sizes = {"stream": 0, "alone": 0}
    for seq, lines in enumerate(batches()):
        header = {"type": "events", "session-id": "s", "seq": seq}
        payload = streamed.encode(header, lines)
        assert unpacker.decode(payload, 1 << 30).lines == lines
        sizes["stream"] += len(payload)
        sizes["alone"] += len(alone.encode(header, lines))
    assert sizes["stream"] < 0.9 * sizes["alone"], sizes


def test_a_stream_survives_a_change_of_level():
    """A new level ends the stream's zstd frame (with its checksum) and starts the next in the same piece."""
    packer, unpacker = packed.Packer(stream=True, clock=lambda: 0.0), packed.Unpacker(stream=True)
    for seq, (level, lines) in enumerate(zip([3, 9, 9, 6, 3] * 20, batches())):
        packer.level = level
        assert unpacker.decode(packer.encode({"type": "events", "session-id": "s", "seq": seq}, lines),
                               1 << 30).lines == lines


@pytest.mark.parametrize("stream", [False, True], ids=["alone", "stream"])
def test_a_compression_bomb_is_refused_without_inflating_it(stream):
    limit = 1 << 20
    compressor = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        19, window_log=packed.STREAM_WINDOW_LOG)).compressobj()
    body = compressor.compress(b"\n" * (256 << 20)) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    bomb = orjson.dumps({"type": "events", "session-id": "s", "seq": 0}) + b"\n" + body
    assert len(bomb) < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as refused:
            packed.Unpacker(stream=stream).decode(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.code == TOO_LARGE and refused.value.extra["limit"] == limit
    most = 4 * limit if not stream else 2 * (limit + packed.OVERSHOOT_BLOCKS * packed.BLOCK)
    assert peak < most, f"decoding the bomb allocated {peak >> 20} MiB"


def zstd_frame_header() -> bytes:
    """A zstd frame header declaring a 2 MiB window and no content size, as a stream's first frame has."""
    return b"\x28\xb5\x2f\xfd" + bytes([0x00, (packed.STREAM_WINDOW_LOG - 10) << 3])


def rle_block(size: int, last: bool = False) -> bytes:
    return struct.pack("<I", int(last) | (1 << 1) | (size << 3))[:3] + b"\n"


def test_padding_after_a_piece_nears_the_limit_is_refused_without_reading_it_4_bytes_at_a_time():
    """Within a few blocks of the limit a piece is read in short slices; bytes that cannot become lines
    (a skippable frame) must not make those slices many."""
    limit = 4 << 20
    near = zstd_frame_header() + b"".join(rle_block(packed.BLOCK) for _ in range(limit // packed.BLOCK - 3)) + \
        rle_block(packed.BLOCK, last=True)
    padding = struct.pack("<II", 0x184D2A50, 4 << 20) + bytes(4 << 20)
    unpacker = packed.Unpacker(stream=True)
    calls = []
    real = unpacker._stream

    class Counting:
        def decompress(self, data):
            calls.append(len(data))
            return real.decompress(data)

    unpacker._stream = Counting()
    with pytest.raises(packed.StreamLost) as refused:
        unpacker.decode(b'{"type":"events","session-id":"s","seq":0}\n' + near + padding, limit)
    assert refused.value.code == TOO_LARGE
    assert len(calls) < 1000, f"{len(calls)} slices"


def test_in_a_stream_a_bad_header_is_an_ordinary_error_and_the_stream_goes_on():
    packer, unpacker = packed.Packer(stream=True), packed.Unpacker(stream=True)
    lines = [line for batch in batches() for line in batch]
    with pytest.raises(ProtocolError) as refused:
        unpacker.decode(packer.encode({"type": "par", "session-id": "s"}, lines), 1 << 30)
    assert refused.value.code == UNKNOWN_TYPE and not isinstance(refused.value, packed.StreamLost)
    later = packer.encode({"type": "events", "session-id": "s", "seq": 0}, lines[:50])
    assert unpacker.decode(later, 1 << 30).lines == lines[:50]


def test_a_stream_frame_over_the_window_is_refused():
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=packed.STREAM_WINDOW_LOG + 1)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = compressor.compress(b'{"n":0}\n') + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    with pytest.raises(packed.StreamLost) as refused:
        packed.Unpacker(stream=True).decode(b'{"type":"events","session-id":"s","seq":0}\n' + body, 1 << 20)
    assert refused.value.code == BAD_MESSAGE


def test_a_piece_read_out_of_its_stream_is_refused_not_misread():
    packer = packed.Packer(stream=True)
    first = [line for batch in batches() for line in batch]
    packer.encode({"type": "events", "session-id": "s", "seq": 0}, first)
    payload = packer.encode({"type": "events", "session-id": "s", "seq": 1}, first[:200])
    for unpacker in (packed.Unpacker(stream=True), packed.Unpacker()):  # one that missed the first frame
        with pytest.raises(ProtocolError) as refused:
            unpacker.decode(payload, 1 << 30)
        assert refused.value.code == BAD_MESSAGE


def test_the_level_rises_while_the_encoder_waits_for_its_link_and_falls_while_it_waits_for_its_cpu():
    """Each frame: `compressing` seconds of encoding after `waiting` seconds since the last one."""
    frames = [(0.01, 0.2)] * 4 + [(0.1, 0.01)] * 4  # a slow link (mostly waiting for acks), then a fast one
    ticks, now = [], 0.0
    for compressing, waiting in frames:
        now += waiting
        ticks += [now, now + compressing]
        now += compressing
    clock = iter(ticks)
    packer = packed.Packer(stream=True, clock=lambda: next(clock))
    levels = []
    for _ in frames:
        packer.encode({"type": "events", "session-id": "s", "seq": 0}, [b"{}"])
        levels.append(packer.level)
    assert levels == [3, 6, 9, 9, 6, 3, 3, 3]


def test_the_daemon_grants_streams_to_a_bounded_number_of_connections(tmp_path, monkeypatch):
    from fulabd import upload
    from tests.memory import Lab

    monkeypatch.setattr(upload, "STREAM_CONNECTIONS", 1)
    lab = Lab(tmp_path / "remote")
    offer = {packed.HEADER: "zstd-stream, zstd"}
    first = lab.client(headers=offer)
    second = lab.client(headers=offer)
    assert (first.response_headers[packed.HEADER.lower()], second.response_headers[packed.HEADER.lower()]) == (
        "zstd-stream", "zstd")
    first.sendClose()
    lab.flush()
    third = lab.client(headers=offer)
    assert third.response_headers[packed.HEADER.lower()] == "zstd-stream"
    assert lab.client(headers={packed.HEADER: "zstd"}).response_headers[packed.HEADER.lower()] == "zstd"
    # An uploader of before zstd-stream offers what it knows; it gets frames compressed alone.
    assert lab.client(headers={packed.HEADER: "zstd-history, zstd"}).response_headers[packed.HEADER.lower()] == "zstd"


def test_an_unreadable_stream_frame_ends_the_connection_and_nothing_is_lost(tmp_path):
    from tests.memory import Lab

    lab = Lab(tmp_path / "remote")
    client = lab.client(headers={packed.HEADER: "zstd-stream, zstd"})
    packer = packed.Packer(stream=True)
    client.sendMessage(packer.encode({"type": "init", "session-id": "h"}, [b'{"n":0}']), isBinary=True)
    client.sendMessage(b'{"type":"events","session-id":"h","seq":1}\nnot zstd', isBinary=True)
    lab.flush()
    assert [reply["type"] for reply in client.take()] == ["ack"]  # no error reply: it would be out of order
    assert client.close_code == 1007 and lab.uploads.errors == {"bad-message": 1}
    again = lab.client(headers={packed.HEADER: "zstd-stream, zstd"})
    assert again.call({"type": "resume", "session-id": "h"})["count"] == 1
    again.sendMessage(packed.Packer(stream=True).encode({"type": "events", "session-id": "h", "seq": 1},
                                                        [b'{"n":1}']), isBinary=True)
    lab.flush()
    assert again.take()[0]["count"] == 2
    assert (tmp_path / "remote" / "h.jsonl").read_bytes() == b'{"n":0}\n{"n":1}\n'


def test_after_a_1007_the_uploader_offers_only_frames_compressed_alone():
    from twisted.internet.task import Clock

    from fulabd.uploader.connection import UploadClientFactory

    class Uploads:
        def disconnected(self, connection, why):
            self.why = why

    factory = UploadClientFactory("ws://127.0.0.1:5056/fulab/lab/upload/ws", uploads=Uploads(), reactor=Clock())
    assert factory.headers[packed.HEADER] == "zstd-stream, zstd"
    protocol = factory.buildProtocol(None)
    protocol.packer, protocol.opened, protocol.confirmed = packed.Packer(stream=True), True, True
    protocol.onClose(False, 1007, "unreadable packed frame (bad-message); reconnect and resume")
    assert factory.headers[packed.HEADER] == "zstd"


def test_a_misframed_piece_ends_the_stream_and_nothing_after_it_is_read():
    """A piece whose lines do not end with a newline leaves the next pieces out of step: they are refused
    unread, rather than read as other lines."""
    compressor = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        3, window_log=packed.STREAM_WINDOW_LOG)).compressobj()
    piece = compressor.compress(b'{"n":0}\n{"n"') + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    following = compressor.compress(b':1}\n') + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    unpacker = packed.Unpacker(stream=True)
    header = b'{"type":"events","session-id":"s","seq":0}\n'
    with pytest.raises(packed.StreamLost):
        unpacker.decode(header + piece, 1 << 20)
    with pytest.raises(packed.StreamLost) as refused:
        unpacker.decode(header + following, 1 << 20)
    assert "earlier" in refused.value.detail
