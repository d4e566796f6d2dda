"""
Packed uploads (fulabd/packed.py): binary frames of zstd-compressed raw lines,
agreed in the handshake; old clients and old servers never see one.
"""

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


def test_a_compression_bomb_is_refused_without_inflating_it():
    limit = 1 << 20
    bomb = orjson.dumps({"type": "events", "session-id": "s", "seq": 0}) + b"\n" + \
        zstandard.ZstdCompressor(level=19).compress(b"\n" * (256 << 20))
    assert len(bomb) < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as refused:
            packed.Unpacker().decode(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.code == TOO_LARGE and refused.value.extra["limit"] == limit
    assert peak < 4 * limit, f"decoding the bomb allocated {peak >> 20} MiB"


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
    assert packed.encodings("gzip, ZSTD-history , zstd") == ["gzip", "zstd-history", "zstd"]
    assert packed.encodings(None) == [] and packed.encodings(" , ") == []


@pytest.mark.slow
def test_the_daemon_agrees_only_when_asked(daemon):
    with connect(daemon.url + UPLOAD, additional_headers={packed.HEADER: "zstd"}) as asking:
        assert asking.response.headers.get(packed.HEADER) == "zstd"
        asking.send(packed.Packer().encode({"type": "init", "session-id": "p"}, [b'{"n":0}', b'{"n":1}']))
        assert orjson.loads(asking.recv(30)) == {"type": "ack", "session-id": "p", "count": 2, "appended": 2,
                                                 "dedup": False}
    with connect(daemon.url + UPLOAD, additional_headers={packed.HEADER: "zstd-history, zstd"}) as newer:
        assert newer.response.headers.get(packed.HEADER) == "zstd-history"
        packer = packed.Packer(history=True)
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


# -- zstd-history: each frame compressed with the connection's frames before it ------------


def batches() -> list[list[bytes]]:
    lines = [line.encode() for path in sample_files() for line in path.read_text().splitlines()]
    return [lines[start:start + 40] for start in range(0, len(lines), 40)]


def test_with_history_frames_round_trip_in_order_and_are_smaller():
    with_history, alone = packed.Packer(history=True), packed.Packer()
    unpacker = packed.Unpacker(history=True)
    sizes = {"history": 0, "alone": 0}
    for seq, lines in enumerate(batches()):
        header = {"type": "events", "session-id": "s", "seq": seq}
        payload = with_history.encode(header, lines)
        assert unpacker.decode(payload, 1 << 30).lines == lines
        sizes["history"] += len(payload)
        sizes["alone"] += len(alone.encode(header, lines))
    assert sizes["history"] < 0.9 * sizes["alone"], sizes


def test_with_history_a_bad_header_is_an_ordinary_error_and_the_histories_stay_together():
    packer, unpacker = packed.Packer(history=True), packed.Unpacker(history=True)
    lines = [line for batch in batches() for line in batch]
    with pytest.raises(ProtocolError) as refused:
        unpacker.decode(packer.encode({"type": "par", "session-id": "s"}, lines), 1 << 30)
    assert refused.value.code == UNKNOWN_TYPE and not isinstance(refused.value, packed.HistoryLost)
    later = packer.encode({"type": "events", "session-id": "s", "seq": 0}, lines[:50])
    assert unpacker.decode(later, 1 << 30).lines == lines[:50]


def test_a_history_frame_without_a_checksum_is_refused():
    body = zstandard.ZstdCompressor(write_checksum=False).compress(b'{"n":0}\n')
    with pytest.raises(packed.HistoryLost):
        packed.Unpacker(history=True).decode(b'{"type":"events","session-id":"s","seq":0}\n' + body, 1 << 20)


def test_a_frame_read_against_another_history_is_refused_not_misread():
    packer = packed.Packer(history=True)
    first = [line for batch in batches() for line in batch]
    assert sum(map(len, first)) > packed.REFRESH_BYTES  # so the next frame refers to it
    packer.encode({"type": "events", "session-id": "s", "seq": 0}, first)
    payload = packer.encode({"type": "events", "session-id": "s", "seq": 1}, first[:200])
    for unpacker in (packed.Unpacker(history=True), packed.Unpacker()):  # one that missed the first frame
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
    packer = packed.Packer(history=True, clock=lambda: next(clock))
    levels = []
    for _ in frames:
        packer.encode({"type": "events", "session-id": "s", "seq": 0}, [b"{}"])
        levels.append(packer.level)
    assert levels == [3, 6, 6, 6, 3, 3, 3, 3]


def test_one_line_frames_do_not_pay_for_renewing_the_history():
    packer = packed.Packer(history=True)
    packer.encode({"type": "events", "session-id": "s", "seq": 0}, [b"x" * (packed.REFRESH_BYTES - 100)])
    renewals = packer.history.renewals
    for seq in range(1, 20):
        packer.encode({"type": "events", "session-id": "s", "seq": seq}, [b"{\"n\":%d}" % seq])
    assert packer.history.renewals == renewals + 1  # once, when the lines passed REFRESH_BYTES


def test_the_daemon_grants_history_to_a_bounded_number_of_connections(tmp_path, monkeypatch):
    from fulabd import upload
    from tests.memory import Lab

    monkeypatch.setattr(upload, "HISTORY_CONNECTIONS", 1)
    lab = Lab(tmp_path / "remote")
    offer = {packed.HEADER: "zstd-history, zstd"}
    first = lab.client(headers=offer)
    second = lab.client(headers=offer)
    assert (first.response_headers[packed.HEADER.lower()], second.response_headers[packed.HEADER.lower()]) == (
        "zstd-history", "zstd")
    first.sendClose()
    lab.flush()
    third = lab.client(headers=offer)
    assert third.response_headers[packed.HEADER.lower()] == "zstd-history"
    assert lab.client(headers={packed.HEADER: "zstd"}).response_headers[packed.HEADER.lower()] == "zstd"


def test_an_unreadable_frame_with_history_ends_the_connection_and_nothing_is_lost(tmp_path):
    from tests.memory import Lab

    lab = Lab(tmp_path / "remote")
    client = lab.client(headers={packed.HEADER: "zstd-history, zstd"})
    packer = packed.Packer(history=True)
    client.sendMessage(packer.encode({"type": "init", "session-id": "h"}, [b'{"n":0}']), isBinary=True)
    lost = packed.Packer(history=True).encode({"type": "events", "session-id": "h", "seq": 1}, [b'{"n":1}'])
    packer.encode({"type": "events", "session-id": "h", "seq": 1}, [b'{"n":1}'])  # the client's history moves on
    client.sendMessage(lost[:-3] + b"xyz", isBinary=True)
    lab.flush()
    assert [reply["type"] for reply in client.take()] == ["ack"]  # no error reply: it would be out of order
    assert client.close_code == 1007 and lab.uploads.errors == {"bad-message": 1}
    again = lab.client(headers={packed.HEADER: "zstd-history, zstd"})
    assert again.call({"type": "resume", "session-id": "h"})["count"] == 1
    again.sendMessage(packed.Packer(history=True).encode({"type": "events", "session-id": "h", "seq": 1},
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
    assert factory.headers[packed.HEADER] == "zstd-history, zstd"
    protocol = factory.buildProtocol(None)
    protocol.packer, protocol.opened, protocol.confirmed = packed.Packer(history=True), True, True
    protocol.onClose(False, 1007, "unreadable packed frame (bad-message); reconnect and resume")
    assert factory.headers[packed.HEADER] == "zstd"
