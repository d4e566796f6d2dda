"""
The viewer stream of a real daemon, driven by an independent WebSocket client: what needs real sockets
(backpressure of a slow reader) or a restart.  The stream's rules are in test_stream_protocol.py.
"""

import socket
from urllib.parse import urlencode

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fixtures import get_json, sample_lines
from tests.test_stream_protocol import CLAUDE_REAL, CODEX_REAL, PAR_A, PAR_B, line_indexes, sample

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


def uploader(daemon):
    return connect(daemon.url + "/fulab/lab/upload/ws", max_size=None)


def store(daemon, session_id: str, lines: list[str], pars: list[dict] = ()) -> str:
    """Upload a session (and PARs); its listed path."""
    with uploader(daemon) as ws:
        assert call(ws, {"type": "init", "session-id": session_id, "events": lines})["count"] == len(lines)
        for par in pars:
            assert call(ws, {"type": "par", "session-id": session_id, "par": par})["type"] == "ack"
    listing = get_json(daemon.http + "/fulab/lab/sessions")["sessions"]
    return next(entry["path"] for entry in listing if entry["session-id"] == session_id)


def viewer(daemon, url_path: str = "/", sock=None, max_queue=16, **query):
    return connect(daemon.url + url_path + "?" + urlencode(query), max_size=None, sock=sock, max_queue=max_queue)


def receive(ws) -> dict:
    return orjson.loads(ws.recv(timeout=30))


def read_history(ws):
    """(first frame, every history event, the history-end frame)."""
    head = receive(ws)
    assert head["type"] in ("init", "delta"), head
    history = list(head["events"])
    while (frame := receive(ws))["type"] == "event":
        history.append(frame["event"])
    assert frame["type"] == "history-end", frame
    return head, history, frame


def slow_socket(daemon) -> socket.socket:
    """A client socket with a small receive buffer, so the server feels backpressure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect(("127.0.0.1", daemon.port))
    return sock


def test_lines_stored_while_history_is_paging_are_sent_once(daemon):
    lines = sample_lines(sample(CLAUDE_REAL)) * 16  # derived: a 12 MB session
    listed = store(daemon, "race", lines[:-40])
    with viewer(daemon, path=listed, sock=slow_socket(daemon)) as ws, uploader(daemon) as up:
        head = receive(ws)
        assert call(up, {"type": "events", "session-id": "race", "seq": len(lines) - 40,
                         "events": lines[-40:]})["count"] == len(lines)
        history = list(head["events"])
        while (frame := receive(ws))["type"] == "event":
            history.append(frame["event"])
    assert head["line-count"] == len(lines) - 40
    assert frame["line-count"] == len(lines)  # picked up by the pager, not lost between history and live
    assert line_indexes(history) == list(range(len(lines)))


def test_a_live_viewer_that_falls_behind_is_caught_up_from_disk(daemon):
    lines = sample_lines(sample(CLAUDE_REAL)) * 16  # derived: 12 MB arriving in one message
    store(daemon, "burst", lines[:10])
    with viewer(daemon, "/fulab/lab/stream/ws", sock=slow_socket(daemon), session="burst") as ws, \
            uploader(daemon) as up:
        read_history(ws)
        assert call(up, {"type": "events", "session-id": "burst", "seq": 10, "events": lines[10:]})["count"] == len(lines)
        live = [receive(ws)["event"] for _ in range(len(lines) - 10)]
        call(up, {"type": "par", "session-id": "burst", "par": PAR_A})
        assert receive(ws)["event"]["par-id"] == "par-a"  # and no second history-end before it
    assert line_indexes(live) == list(range(10, len(lines)))


def refusal(daemon, url_path: str = "/", **query) -> dict:
    with viewer(daemon, url_path, **query) as ws:
        reply = receive(ws)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1008
    return reply


def test_pars_and_metadata_survive_a_restart(daemon):
    lines = sample_lines(sample(CODEX_REAL))
    listed = store(daemon, "kept", lines, [PAR_A])
    daemon.restart()
    with viewer(daemon, path=listed) as ws:
        head, history, _ = read_history(ws)
    assert (head["session-id"], head["par-count"]) == ("kept", 1)
    assert [event["par-id"] for event in history if event["type"] == "par"] == ["par-a"]
    with uploader(daemon) as up:
        assert call(up, {"type": "par", "session-id": "kept", "par": PAR_B})["pars"] == 2


def test_a_viewer_that_offers_deflate_gets_the_same_events_compressed(daemon):
    lines = sample_lines(sample("fe5e1c67"))
    store(daemon, "deflated", lines)
    with viewer(daemon, "/fulab/lab/stream/ws", session="deflated") as compressed, \
            connect(daemon.url + "/fulab/lab/stream/ws?session=deflated", max_size=None, compression=None) as plain:
        assert "permessage-deflate" in compressed.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        assert read_history(compressed)[1] == read_history(plain)[1]


def test_a_viewer_sending_a_deflate_bomb_is_closed_before_it_inflates(daemon):
    listed = store(daemon, "bombed", ['{"type":"user"}'])
    with viewer(daemon, path=listed) as ws:
        read_history(ws)
        before = daemon.rss()
        ws.send("x" * (256 << 20))  # deflates to about 256 KB; the daemon inflates at most 64 KiB of it
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009
        assert daemon.rss() - before < 64 << 20
