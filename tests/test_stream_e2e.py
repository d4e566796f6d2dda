"""
The viewer stream of a real daemon, driven by an independent WebSocket client:
history paging, offsets, live lines and PARs, reconnects, and path refusals.
"""

import os
import socket
from urllib.parse import urlencode

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fulabd.events import DUPLICATE_EVENT_MSGS
from tests.fixtures import Daemon, get_json, sample_files, sample_lines

CLAUDE_REAL = "fe5e1c67"
CODEX_REAL = "rollout-2026-06-05T10-28-20-019e9625"
FIRST_FRAME_LIMIT = 1024 * 1024 + 256 * 1024  # about 1 MB of events, plus at most one (bounded) event


def sample(prefix: str):
    return next(path for path in sample_files() if path.name.startswith(prefix))


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


def expected_lines(lines: list[str], start: int = 0) -> list[int]:
    """Line indexes a viewer gets from `start`: all but Codex event_msg duplicates."""
    def skipped(line):
        value = orjson.loads(line)
        return value.get("type") == "event_msg" and value["payload"].get("type") in DUPLICATE_EVENT_MSGS
    return [index for index, line in enumerate(lines) if index >= start and not skipped(line)]


def line_indexes(history: list[dict]) -> list[int]:
    return [event["line"] for event in history if event["line"] is not None]


PAR_A = {"id": "par-a", "title": "First", "tags": ["x"], "questions": {"intention": "learn", "learned": "a"}}
PAR_B = {"id": "par-b", "title": "Second", "tags": ["y"], "questions": {"happening": "b"}}


def test_every_sample_streams_every_line_once_in_order_on_both_urls(daemon):
    for number, path in enumerate(sample_files()):
        lines = sample_lines(path)
        listed = store(daemon, f"{number}-{path.stem}", lines)
        for url_path, query in (("/", {"path": listed}), ("/fulab/lab/stream/ws", {"session": f"{number}-{path.stem}"})):
            with viewer(daemon, url_path, **query) as ws:
                head, history, end = read_history(ws)
            assert (head["type"], head["path"], head["line-count"], head["offset"]) == ("init", listed, len(lines), 0)
            assert line_indexes(history) == expected_lines(lines), path
            assert end["line-count"] == len(lines)


def test_history_is_paged_in_bounded_frames(daemon):
    lines = sample_lines(sample(CLAUDE_REAL)) * 8  # derived: a 6 MB session
    listed = store(daemon, "big", lines)
    with viewer(daemon, path=listed) as ws:
        first = ws.recv(timeout=30)
        head = orjson.loads(first)
        assert head["more"] is True and len(first) <= FIRST_FRAME_LIMIT
        history = list(head["events"])
        while (frame := receive(ws))["type"] == "event":
            history.append(frame["event"])
    assert len(head["events"]) < len(lines)
    assert line_indexes(history) == list(range(len(lines)))
    assert frame == {"type": "history-end", "line-count": len(lines), "par-count": 0}


def test_offset_and_par_offset_send_only_what_the_viewer_lacks(daemon):
    lines = sample_lines(sample(CODEX_REAL))
    listed = store(daemon, "c", lines, [PAR_A, PAR_B])
    with viewer(daemon, "/fulab/lab/", path=listed, offset=4, par_offset=1) as ws:  # the old lab ignored the URL path
        head, history, end = read_history(ws)
    assert (head["type"], head["offset"], head["par-count"], head["new-par-count"]) == ("delta", 4, 2, 1)
    assert line_indexes(history) == expected_lines(lines, 4)
    pars = [event for event in history if event["type"] == "par"]
    assert [(par["par-id"], par["par-index"]) for par in pars] == [("par-b", 1)]
    assert pars[0]["text"] == "## PAR: Second\n\n**Intention:** \n\n**Happening:** b\n\n**Perspectives:** " \
                              "\n\n**Learned:** \n\n**Forward:** "
    assert end == {"type": "history-end", "line-count": len(lines), "par-count": 2}
    with viewer(daemon, path=listed, offset=len(lines) + 5, par_offset=9) as ws:
        head, history, _ = read_history(ws)
    assert (head["new-par-count"], history) == (0, [])


def test_live_lines_and_pars_arrive_once_and_existing_pars_are_not_resent(daemon):
    lines = sample_lines(sample(CLAUDE_REAL))
    listed = store(daemon, "live", lines[:100], [PAR_A])
    with viewer(daemon, path=listed) as ws, uploader(daemon) as up:
        head, history, end = read_history(ws)
        assert [event["par-id"] for event in history if event["type"] == "par"] == ["par-a"]
        assert call(up, {"type": "events", "session-id": "live", "seq": 100, "events": lines[100:103]})["count"] == 103
        live = [receive(ws)["event"] for _ in range(3)]
        assert [event["line"] for event in live] == [100, 101, 102]
        assert call(up, {"type": "par", "session-id": "live", "par": PAR_A})["dedup"] is True
        assert call(up, {"type": "par", "session-id": "live", "par": PAR_B})["dedup"] is False
        par = receive(ws)["event"]
        assert (par["type"], par["par-id"], par["par-index"], par["title"]) == ("par", "par-b", 1, "Second")
        assert call(up, {"type": "events", "session-id": "live", "seq": 100, "events": lines[100:104]})["count"] == 104
        assert receive(ws)["event"]["line"] == 103  # nothing in between: no re-sent line or PAR
        ws.send('{"type":"ping"}')
        assert receive(ws)["type"] == "pong"
        ws.send('{"type":"event","event":"x"}')
        assert receive(ws)["err"] == "unknown-type"


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


def test_reconnecting_with_offset_loses_and_repeats_nothing(daemon):
    lines = sample_lines(sample(CLAUDE_REAL)) * 8
    listed = store(daemon, "again", lines[:3000], [PAR_A])
    seen = []
    with viewer(daemon, path=listed, max_queue=None) as ws:  # reads on, so that it sees the close mid-history
        head = receive(ws)
        assert head["more"] is True
        seen.extend(head["events"])
        for _ in range(50):
            seen.append(receive(ws)["event"])
    with uploader(daemon) as up:
        call(up, {"type": "events", "session-id": "again", "seq": 3000, "events": lines[3000:3200]})
        call(up, {"type": "par", "session-id": "again", "par": PAR_B})
    offset = max(line_indexes(seen)) + 1
    pars = sum(event["type"] == "par" for event in seen)
    with viewer(daemon, path=listed, offset=offset, par_offset=pars) as ws:
        _, history, _ = read_history(ws)
    seen.extend(history)
    assert line_indexes(seen) == list(range(3200))
    assert [event["par-id"] for event in seen if event["type"] == "par"] == ["par-a", "par-b"]


def refusal(daemon, url_path: str = "/", **query) -> dict:
    with viewer(daemon, url_path, **query) as ws:
        reply = receive(ws)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1008
    return reply


def test_paths_outside_the_served_sessions_get_one_identical_refusal(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"type":"user","message":{"content":"secret"}}\n')
    os.symlink(secret, root / "leak.jsonl")  # a symlink in the store pointing outside it
    daemon = Daemon(root).start()
    try:
        listed = store(daemon, "s", ['{"a":1}'])
        assert [entry["session-id"] for entry in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]] == ["s"]
        os.symlink("/etc/passwd", root / "late.jsonl")
        asked = ["/etc/passwd", f"{root}/../secret.jsonl", f"{root}/s.jsonl/../../secret.jsonl",
                 f"{root}/../../../../../etc/passwd", str(root / "leak.jsonl"), str(root / "late.jsonl"),
                 str(root / "missing.jsonl"), str(root / "s.meta.edn"), str(root), "s.jsonl"]
        replies = [refusal(daemon, path=path) for path in asked]
        replies += [refusal(daemon, "/fulab/lab/stream/ws", session=ident) for ident in ("leak", "../s", "nope")]
        for reply, path in zip(replies, asked + ["leak", "../s", "nope"]):
            assert reply.pop("path") == path
        assert all(reply == replies[0] for reply in replies)
        assert replies[0]["err"] == "invalid-path"
        with viewer(daemon, path=listed) as ws:
            assert receive(ws)["events"][0]["data"] == {"a": 1}
        with viewer(daemon, path=f"{root}/./s.jsonl") as ws:  # the same file, spelled differently
            assert receive(ws)["path"] == listed
    finally:
        daemon.stop()


def test_raw_streams_the_stored_lines_and_status_counts_viewers(daemon):
    path = sample(CODEX_REAL)
    lines = sample_lines(path)
    store(daemon, "r", lines)
    with viewer(daemon, "/fulab/lab/stream/ws", session="r", raw=1) as ws:
        head, history, _ = read_history(ws)
        assert get_json(daemon.http + "/fulab/lab/status")["viewers"] == 1
    assert head["raw"] is True
    assert [event["raw"] for event in history] == lines
    assert [event["line"] for event in history] == list(range(len(lines)))


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


def test_a_viewer_that_sends_a_big_message_is_closed_with_1009(daemon):
    listed = store(daemon, "quiet", ['{"type":"user"}'])
    with viewer(daemon, path=listed) as ws:
        read_history(ws)
        ws.send("x" * 100_000)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009


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
