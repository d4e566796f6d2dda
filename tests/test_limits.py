"""
The daemon's limits, on a real daemon: connection caps, handshake and ping
timeouts, the free-disk floor, and the self-probe getting through all of them.
"""

import contextlib
import http.client
import os
import secrets
import socket
import time

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.fixtures import Daemon, frame, open_raw, read_frames, sample_files, sample_lines

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)

UPLOAD = "/fulab/lab/upload/ws"


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


def from_client(server, address: str):
    """A WebSocket that says (in X-Forwarded-For) it comes from `address`."""
    return connect(server.url + UPLOAD, additional_headers={"X-Forwarded-For": address})


def test_caps_count_each_client_behind_a_trusted_proxy(tmp_path):
    server = Daemon(tmp_path / "remote", "--trusted-proxy", "127.0.0.1", "--max-connections", "3",
                    "--max-connections-per-ip", "2").start()
    try:
        with from_client(server, "203.0.113.1") as a1, from_client(server, "203.0.113.1") as a2:
            with pytest.raises(InvalidStatus) as refused:
                from_client(server, "203.0.113.1")
            assert refused.value.response.status_code == 503
            assert "203.0.113.1 already has the maximum of 2" in refused.value.response.reason_phrase
            with from_client(server, "203.0.113.2") as b1:
                with pytest.raises(InvalidStatus) as refused:
                    from_client(server, "203.0.113.2")
                assert refused.value.response.status_code == 503
                assert "maximum of 3 connections" in refused.value.response.reason_phrase
                for ws in (a1, a2, b1):
                    assert call(ws, {"type": "ping"})["type"] == "pong"
            server.wait_for_log(r"upload connection from 203\.0\.113\.2 closed")
            with from_client(server, "203.0.113.3") as c1:
                assert call(c1, {"type": "ping"})["type"] == "pong"
        server.wait_for_log(r"refused a connection from 203\.0\.113\.1: 203\.0\.113\.1 already has")
    finally:
        server.stop()


def test_without_a_trusted_proxy_forwarded_for_does_not_escape_the_per_ip_cap(tmp_path):
    server = Daemon(tmp_path / "remote", "--max-connections-per-ip", "1").start()
    try:
        with from_client(server, "203.0.113.1") as first:
            with pytest.raises(InvalidStatus) as refused:
                from_client(server, "203.0.113.2")
            assert "127.0.0.1 already has the maximum of 1" in refused.value.response.reason_phrase
            assert call(first, {"type": "ping"})["type"] == "pong"
    finally:
        server.stop()


def test_the_self_probe_gets_through_tokens_and_full_caps(tmp_path):
    token = secrets.token_urlsafe(32)
    (tmp_path / "tokens").write_text(f"{token} alice\n")
    server = Daemon(tmp_path / "remote", "--token-file", str(tmp_path / "tokens"), "--max-connections", "1",
                    "--restart-interval", "0.2").start()
    try:
        # The one connection allowed: a keep-alive HTTP connection (they count too), asking the status on it.
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)) as held:
            def read_status() -> dict:
                held.request("GET", "/fulab/lab/status?token=" + token)
                return orjson.loads(held.getresponse().read())

            def probes() -> int:  # passing probes log nothing: the status counts them
                return read_status()["listeners"][0]["probes"]

            wanted, deadline = probes() + 3, time.monotonic() + 60
            with pytest.raises(InvalidStatus):
                connect(server.url + UPLOAD + "?token=" + token)  # the caps are full
            while probes() < wanted:
                assert time.monotonic() < deadline, "the self-probe did not pass three times in 60 s"
                time.sleep(0.1)
            status = read_status()
        assert status["restarts"] == 0 and all(port["failures"] == 0 for port in status["listeners"])
        assert not any("did not answer" in line or "Bearer" in line for line in server.log)
    finally:
        server.stop()


def test_a_client_that_stalls_in_the_handshake_is_dropped_and_open_websockets_are_not(tmp_path):
    server = Daemon(tmp_path / "remote", "--handshake-timeout", "0.5").start()
    try:
        with connect(server.url + UPLOAD) as ws:
            stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            stalled.sendall(b"GET /fulab/lab/upload/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            assert stalled.recv(1) == b""
            stalled.close()
            server.wait_for_log(r"dropped a connection from 127\.0\.0\.1: no complete request head within 0\.5 s")
            assert call(ws, {"type": "ping"})["type"] == "pong"
    finally:
        server.stop()


def test_a_client_that_answers_pings_stays_and_one_that_does_not_is_dropped(tmp_path):
    # Autobahn's timers fire on whole seconds (txaio's batched timer truncates), so whole seconds here.
    server = Daemon(tmp_path / "remote", "--ping-interval", "1", "--ping-timeout", "2").start()
    try:
        sock = open_raw(server.port)
        [(opcode, payload)] = read_frames(sock, count=1)
        assert opcode == 0x9
        sock.sendall(frame(0xA, payload))
        [(opcode, _)] = read_frames(sock, count=1)
        assert opcode == 0x9, "a client that answered the ping is still served"
        read_frames(sock)  # until the server ends the connection
        server.wait_for_log(r"upload connection from 127\.0\.0\.1 closed")
    finally:
        server.stop()


def free_mb(path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize // (1024 * 1024)


def healthz(server) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_below_the_free_space_floor_uploads_are_refused_whole_then_resume(tmp_path):
    root = tmp_path / "remote"
    sample = sample_files()[0]
    lines = sample_lines(sample)
    token = secrets.token_urlsafe(32)
    (tmp_path / "tokens").write_text(f"{token} alice\n")
    server = Daemon(root, "--min-free-mb", str(free_mb(tmp_path) + 1024), "--token-file",
                    str(tmp_path / "tokens")).start()
    try:
        with connect(server.url + UPLOAD + "?token=" + token, max_size=None) as ws:
            refused = call(ws, {"type": "init", "session-id": "full", "events": lines})
            assert refused["type"] == "error" and refused["err"] == "storage-full", refused
            assert "MB free" in refused["detail"]
            again = call(ws, {"type": "events", "session-id": "full", "seq": 0, "events": lines[:1]})
            assert again["err"] == "storage-full"
            assert call(ws, {"type": "resume", "session-id": "full"})["count"] == 0
        status, body = healthz(server)
        assert status == 503 and b"MB free, less than --min-free-mb" in body, body  # it tells the truth
    finally:
        server.stop()
    assert [p for p in root.iterdir() if p.name != ".index"] == []  # .index: the search index
    server = Daemon(root, "--min-free-mb", "1").start()
    try:
        assert healthz(server)[0] == 200
        with connect(server.url + UPLOAD, max_size=None) as ws:
            assert call(ws, {"type": "resume", "session-id": "full"})["count"] == 0
            assert call(ws, {"type": "init", "session-id": "full", "events": lines})["count"] == len(lines)
    finally:
        server.stop()
    assert (root / "full.jsonl").read_bytes() == sample.read_bytes()


def test_startup_warns_when_autobahn_runs_without_nvx(tmp_path, daemon):
    assert not any("NVX" in line for line in daemon.log)
    server = Daemon(tmp_path / "slow", env={"AUTOBAHN_USE_NVX": "0"}).start()
    try:
        assert "Unset AUTOBAHN_USE_NVX" in server.wait_for_log(r"native acceleration \(NVX\) is off")
    finally:
        server.stop()
