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
    message = packed.decode(packed.Packer().encode({"type": "events", "session-id": "s", "seq": 7}, lines), 1 << 20)
    assert (message.kind, message.session_id, message.seq, message.lines) == ("events", "s", 7, lines)


def test_an_init_keeps_its_metadata():
    payload = packed.Packer().encode({"type": "init", "session-id": "s", "project": "p", "cwd": "/w"}, [b"{}"])
    message = packed.decode(payload, 1 << 20)
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
            packed.decode(bomb, limit)
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
        packed.decode(payload, 1 << 20)
    assert refused.value.code == code


def test_the_header_value_is_a_list():
    assert packed.offered("gzip, zstd") and packed.offered("ZSTD") and not packed.offered("gzip")
    assert not packed.offered(None)


@pytest.mark.slow
def test_the_daemon_agrees_only_when_asked(daemon):
    with connect(daemon.url + UPLOAD, additional_headers={packed.HEADER: "zstd"}) as asking:
        assert asking.response.headers.get(packed.HEADER) == "zstd"
        asking.send(packed.Packer().encode({"type": "init", "session-id": "p"}, [b'{"n":0}', b'{"n":1}']))
        assert orjson.loads(asking.recv(30)) == {"type": "ack", "session-id": "p", "count": 2, "appended": 2,
                                                 "dedup": False}
    with connect(daemon.url + UPLOAD) as old:
        assert packed.HEADER not in old.response.headers
        old.send(packed.Packer().encode({"type": "events", "session-id": "p", "seq": 2}, [b"{}"]))
        assert orjson.loads(old.recv(30))["err"] == "bad-json"
    assert (daemon.root / "p.jsonl").read_bytes() == b'{"n":0}\n{"n":1}\n'


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
