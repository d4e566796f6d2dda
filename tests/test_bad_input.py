"""
Hostile and broken clients against the real daemon: random and malformed
messages (Hypothesis), invalid UTF-8, oversize and garbage frames, half-open
and slow handshakes, thousands of connections opening and closing.

After every attack (checked after each test, so in any order) the daemon
still answers, nothing was written outside its root, every sidecar parses,
and its memory stayed bounded; every refusal was a documented error.
"""

import json
import os
import re
import socket
import ssl
import struct

import edn_format
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from fulabd import edn, messages
from tests.fixtures import Daemon, close_code, frame, handshake_request, open_raw, read_frames

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)

EXAMPLES = int(os.environ.get("FULAB_FUZZ_EXAMPLES", "300"))
CONNECTIONS = int(os.environ.get("FULAB_FUZZ_CONNECTIONS", "2000"))
MAX_MESSAGE = 1 << 20
RSS_BOUND = 200 << 20
UPLOAD = "/fulab/lab/upload/ws"
ERROR_CODES = {value for name, value in vars(messages).items() if name.isupper() and isinstance(value, str)}
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.(jsonl|meta\.edn|par\.edn)$")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon for the whole module: every attack lands on the same process.  Once they all
    ran (whichever ran), it stops and leaves only well-formed files in its root.  Every attack comes
    from 127.0.0.1, so the connection caps are off (they are tested in test_limits and test_gate)."""
    home = tmp_path_factory.mktemp("bad-input")
    server = Daemon(home / "remote", "--max-message-size", str(MAX_MESSAGE), "--handshake-timeout", "2",
                    "--max-connections", "0", "--max-connections-per-ip", "0").start()
    yield server
    server.stop()
    check_files(server, while_running=False)


@pytest.fixture(autouse=True)
def unharmed(daemon):
    """After each attack, in whatever order they run: the daemon still answers, its memory stayed
    bounded, and it wrote only inside its root."""
    yield
    assert ping(daemon)["type"] == "pong"
    rss = daemon.rss()
    assert rss < RSS_BOUND, f"daemon RSS {rss >> 20} MB after the attacks"
    check_files(daemon, while_running=True)


def check_files(daemon, while_running: bool):
    """Only session files directly in the root, with safe names, and every sidecar parses.  While the
    daemon runs, a sidecar may be mid-rewrite (`<name>.tmp`, renamed over it at once)."""
    home = daemon.root.parent
    assert [path.name for path in home.iterdir()] == ["remote"]
    for path in daemon.root.rglob("*"):
        if path.relative_to(daemon.root).parts[0] == ".index":  # the search index's own folder
            continue
        assert path.parent == daemon.root and path.is_file(), path
        name = path.name[:-len(".tmp")] if while_running and path.name.endswith(".edn.tmp") else path.name
        assert SAFE_NAME.match(name) and len(path.name) < 200, path.name
        if path.name.endswith(".edn"):
            edn_format.loads(path.read_text("utf-8"))


def ping(daemon) -> dict:
    with connect(daemon.url + UPLOAD) as ws:
        ws.send('{"type":"ping"}')
        return orjson.loads(ws.recv(timeout=30))


# -- random and malformed messages ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 64) | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
session_ids = st.one_of(st.sampled_from(["a", "b", "../up", "x/../../y", ".", "..", "/abs", "nul\x00id"]),
                        st.text(max_size=40), st.text(min_size=1000, max_size=1100), st.integers(), json_values)
lines = st.one_of(st.text(max_size=100), json_values)
client_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["init", "event", "events", "resume", "par", "ping"]) | json_values},
    optional={"session-id": session_ids, "session/id": session_ids, "id": session_ids,
              "seq": st.integers(min_value=-2, max_value=5) | st.integers(min_value=2 ** 62) | json_values,
              "events": st.lists(lines, max_size=5) | json_values, "event": lines,
              "par": st.dictionaries(st.sampled_from(["id", "title", "tags", "questions", "a b", "", ":k"]) |
                                     st.text(max_size=8), json_values, max_size=5) | json_values,
              "project": json_values, "source": json_values, "cwd": json_values})
payloads = st.one_of(
    client_messages.map(lambda message: json.dumps(message)),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200))


def check_reply(reply: dict, sent):
    assert reply.get("type") in ("ack", "pong", "error"), (sent, reply)
    if reply["type"] == "error":
        assert reply["err"] in ERROR_CODES, (sent, reply)
        assert isinstance(reply["detail"], str) and reply["detail"], (sent, reply)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payloads, min_size=1, max_size=8))
def test_random_messages_each_get_one_documented_reply(daemon, batch):
    with connect(daemon.url + UPLOAD, max_size=None) as ws:
        for payload in batch:
            ws.send(payload)
        for payload in batch:
            check_reply(orjson.loads(ws.recv(timeout=30)), payload)
        ws.send('{"type":"ping"}')
        assert orjson.loads(ws.recv(timeout=30))["type"] == "pong"


def test_odd_keys_and_tags_are_stored_in_sidecars_that_read_back(daemon):
    odd = {"a b": 1, "": 2, "x/": 3, "é": 4, ":k": 5, "6": 6}
    with connect(daemon.url + UPLOAD) as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": "odd", "cwd": odd, "events": ["{}"]}).decode())
        ws.send(orjson.dumps({"type": "par", "session-id": "odd",
                              "par": odd | {"id": "p", "title": "t", "tags": ["", "ok", ":colon"]}}).decode())
        assert [orjson.loads(ws.recv(timeout=30))["type"] for _ in range(2)] == ["ack", "ack"]
    meta = edn.loads((daemon.root / "odd.meta.edn").read_bytes())
    [par] = edn.loads((daemon.root / "odd.par.edn").read_bytes())
    assert meta["cwd"] == odd  # every key reads back as it was sent, `:k` as `:k`
    assert par["tags"] == ["ok", "colon"] and par["a b"] == 1 and par[":k"] == 5


@pytest.mark.parametrize("payload", [b'{"type":"ping","x":"\xff"}', b"\xc3\x28", b'{"type":"init","session-id":"\xed\xa0\x80"}'])
def test_invalid_utf8_in_a_text_frame_closes_with_1007_and_stores_nothing(daemon, payload):
    before = sorted(daemon.root.iterdir())
    sock = open_raw(daemon.port)
    sock.sendall(frame(0x1, payload))
    assert close_code(read_frames(sock)) == 1007
    sock.close()
    assert sorted(daemon.root.iterdir()) == before
    assert ping(daemon)["type"] == "pong"


@pytest.mark.parametrize("claimed", [MAX_MESSAGE + 1, 1 << 40, (1 << 63) - 1])
def test_oversize_frame_header_is_refused_without_reading_the_payload(daemon, claimed):
    sock = open_raw(daemon.port)
    sock.sendall(frame(0x1, b'{"type":"init","session-id":"huge","events":["', length=claimed))
    frames = read_frames(sock)
    sock.close()
    assert close_code(frames) == 1009
    assert not (daemon.root / "huge.jsonl").exists()
    assert ping(daemon)["type"] == "pong"


def test_oversize_message_in_many_small_frames_is_refused(daemon):
    sock = open_raw(daemon.port)
    piece = b"x" * (64 << 10)
    sock.sendall(frame(0x1, b'{"type":"ping","pad":"', fin=False))
    try:
        for _ in range(MAX_MESSAGE // len(piece) + 2):
            sock.sendall(frame(0x0, piece, fin=False))
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = read_frames(sock)
    sock.close()
    assert close_code(frames) == 1009
    assert any(opcode == 0x1 and orjson.loads(payload)["err"] == "too-large" for opcode, payload in frames)


@settings(max_examples=min(EXAMPLES, 100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=300))
def test_garbage_bytes_after_the_handshake_never_hurt_the_daemon(daemon, garbage):
    sock = open_raw(daemon.port)
    sock.sendall(garbage)
    sock.shutdown(socket.SHUT_WR)
    frames = read_frames(sock)  # the daemon answers what it can parse, then closes
    sock.close()
    for opcode, payload in frames:
        if opcode == 0x1:
            check_reply(orjson.loads(payload), garbage)


def test_a_tls_client_on_the_plain_port_hears_that_it_is_not_tls_without_waiting_for_the_timeout(daemon):
    """A wss:// URL given for the plain port: the TLS layer's own error, not a hang until --handshake-timeout."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as raw:
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version number"):
            context.wrap_socket(raw)


def test_half_open_and_slow_handshakes_do_not_block_other_clients(daemon):
    hanging = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
            request = handshake_request(daemon.port)
            sock.sendall(request[:(i * 7) % len(request)])  # cut somewhere in the request
            hanging.append(sock)
        slow = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
        request = handshake_request(daemon.port)
        for index in range(0, len(request) - 1, 5):
            slow.sendall(request[index:index + 5])
            if index == 50:
                assert ping(daemon)["type"] == "pong"  # served while 201 handshakes are unfinished
        response = slow.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response
        slow.sendall(frame(0x1, b'{"type":"ping"}'))
        assert orjson.loads(read_frames(slow, count=1)[0][1])["type"] == "pong"
        slow.close()
    finally:
        for sock in hanging:
            sock.close()


def test_thousands_of_connections_opening_and_closing(daemon):
    for i in range(CONNECTIONS):
        kind = i % 4
        if kind == 0:  # TCP only
            socket.create_connection(("127.0.0.1", daemon.port), timeout=30).close()
        elif kind == 1:  # handshake, then vanish without a close frame
            open_raw(daemon.port).close()
        elif kind == 2:  # handshake, then reset
            sock = open_raw(daemon.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        else:  # a message, then vanish before the reply
            sock = open_raw(daemon.port)
            sock.sendall(frame(0x1, b'{"type":"events","session-id":"churn","seq":%d,"events":["%d"]}' % (
                i // 4, i // 4)))
            sock.close()
    assert ping(daemon)["type"] == "pong"
    with connect(daemon.url + UPLOAD) as ws:
        ws.send('{"type":"resume","session-id":"churn"}')
        count = orjson.loads(ws.recv(timeout=30))["count"]
    stored = (daemon.root / "churn.jsonl").read_bytes()
    assert stored == b"".join(b"%d\n" % n for n in range(count))
