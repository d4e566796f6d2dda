"""
The upload endpoint of a real daemon, driven by an independent WebSocket client.
"""

import hashlib

import edn_format
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.fixtures import get_json, sample_files, sample_lines

UPLOAD_PATHS = ["/fulab/lab/upload/ws", "/upload/ws", "/some/prefix/lab/upload/ws"]


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


def upload(daemon, message: dict, path: str = "/fulab/lab/upload/ws") -> dict:
    with connect(daemon.url + path, max_size=None) as ws:
        return call(ws, message)


@pytest.mark.parametrize("path", UPLOAD_PATHS)
def test_every_sample_is_stored_byte_identical_on_every_upload_path(daemon, path):
    for number, sample in enumerate(sample_files()):
        session_id = f"{number}-{sample.stem}"
        reply = upload(daemon, {"type": "init", "session-id": session_id, "source": "codex",
                                "events": sample_lines(sample)}, path)
        assert reply == {"type": "ack", "session-id": session_id, "count": len(sample_lines(sample)),
                         "appended": len(sample_lines(sample)), "dedup": False}
        stored = daemon.root / f"{session_id}.jsonl"
        assert stored.read_bytes() == sample.read_bytes(), sample


def test_repeated_init_adds_nothing_and_extended_init_adds_only_the_tail(daemon):
    sample = next(p for p in sample_files() if p.name.startswith("fe5e1c67"))
    lines = sample_lines(sample)
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        first = call(ws, {"type": "init", "session-id": "s", "events": lines[:100]})
        again = call(ws, {"type": "init", "session-id": "s", "events": lines[:100]})
        longer = call(ws, {"type": "init", "session-id": "s", "events": lines})
        shorter = call(ws, {"type": "init", "session-id": "s", "events": lines[:10]})
    assert (first["count"], first["appended"], first["dedup"]) == (100, 100, False)
    assert (again["count"], again["appended"], again["dedup"]) == (100, 0, True)
    assert (longer["count"], longer["appended"], longer["dedup"]) == (len(lines), len(lines) - 100, False)
    assert (shorter["count"], shorter["appended"], shorter["dedup"]) == (len(lines), 0, True)
    assert (daemon.root / "s.jsonl").read_bytes() == sample.read_bytes()


def test_init_that_disagrees_is_a_conflict_and_changes_nothing(daemon):
    lines = ['{"a":1}', '{"a":2}', '{"a":3}']
    upload(daemon, {"type": "init", "session-id": "s", "events": lines})
    reply = upload(daemon, {"type": "init", "session-id": "s", "events": ['{"a":1}', '{"a":9}', '{"a":3}', "x"]})
    assert reply["type"] == "error" and reply["err"] == "conflict" and reply["line"] == 1
    assert (daemon.root / "s.jsonl").read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'


def test_seq_batches_resume_and_gap(daemon):
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        assert call(ws, {"type": "resume", "session-id": "n"})["count"] == 0
        assert call(ws, {"type": "events", "session-id": "n", "seq": 0, "events": ["a", "b"]})["count"] == 2
        gap = call(ws, {"type": "events", "session-id": "n", "seq": 5, "events": ["f"]})
        assert (gap["err"], gap["expected"]) == ("gap", 2)
        overlap = call(ws, {"type": "events", "session-id": "n", "seq": 1, "events": ["b", "c"]})
        assert (overlap["count"], overlap["appended"], overlap["dedup"]) == (3, 1, False)
        single = call(ws, {"type": "event", "session-id": "n", "seq": 3, "event": {"k": [1, 2]}})
        assert single["count"] == 4
        assert call(ws, {"type": "resume", "session-id": "n"})["count"] == 4
    assert (daemon.root / "n.jsonl").read_bytes() == b'a\nb\nc\n{"k":[1,2]}\n'


def test_event_after_init_may_omit_the_session_id(daemon):
    with connect(daemon.url + "/upload/ws") as ws:
        call(ws, {"type": "init", "session/id": "old", "events": [{"x": 1}]})
        assert call(ws, {"type": "event", "event": "raw line"})["count"] == 2
    assert (daemon.root / "old.jsonl").read_bytes() == b'{"x":1}\nraw line\n'


@pytest.mark.parametrize("message, code", [
    ("not json", "bad-json"),
    ("[1, 2]", "bad-json"),
    ('{"type": "event", "event": "x"}', "missing-session-id"),
    ('{"type": "init", "session-id": "", "events": []}', "missing-session-id"),
    ('{"type": "resume"}', "missing-session-id"),
    ('{"type": "nonsense", "session-id": "a"}', "unknown-type"),
    ('{"session-id": "a"}', "unknown-type"),
    ('{"type": "init", "session-id": "a", "events": ["two\\nlines"]}', "bad-event"),
    ('{"type": "init", "session-id": "a", "events": {"not": "a list"}}', "bad-event"),
    ('{"type": "events", "session-id": "a", "events": ["x"]}', "bad-event"),
    ('{"type": "events", "session-id": "a", "seq": -1, "events": ["x"]}', "bad-event"),
    ('{"type": "event", "session-id": "a"}', "bad-event"),
    ('{"type": "par", "session-id": "a", "par": "text"}', "bad-event"),
])
def test_every_bad_message_gets_its_error_and_the_connection_stays_open(daemon, message, code):
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        ws.send(message)
        reply = orjson.loads(ws.recv(timeout=30))
        assert reply["type"] == "error" and reply["err"] == code, reply
        assert reply["detail"]
        assert call(ws, {"type": "ping"})["type"] == "pong"
    assert not (daemon.root / "a.jsonl").exists()


def test_oversize_message_gets_too_large_then_close_1009(tmp_path):
    from tests.fixtures import Daemon

    daemon = Daemon(tmp_path / "remote", "--max-message-size", "1000").start()
    try:
        with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
            ws.send(orjson.dumps({"type": "init", "session-id": "big", "events": ["x" * 2000]}).decode())
            reply = orjson.loads(ws.recv(timeout=30))
            assert reply["err"] == "too-large" and reply["limit"] == 1000
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1009
        assert not (daemon.root / "big.jsonl").exists()
        with connect(daemon.url + "/upload/ws") as ws:
            assert call(ws, {"type": "ping"})["type"] == "pong"
    finally:
        daemon.stop()


def test_unknown_websocket_path_is_refused_with_a_clear_error(daemon):
    with connect(daemon.url + "/fulab/lab/nothing/here") as ws:
        reply = orjson.loads(ws.recv(timeout=30))
        assert reply["err"] == "invalid-path" and "/fulab/lab/upload/ws" in reply["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008


@pytest.mark.parametrize("session_id", ["../../etc/passwd", "a/b", "a_b", "", ".hidden", "x" * 10_000, "日本語"])
def test_hostile_and_odd_ids_stay_inside_the_root_and_apart(daemon, session_id):
    reply = upload(daemon, {"type": "init", "session-id": session_id, "events": [session_id[:50] or "empty"]})
    if session_id == "" or len(session_id) > 1024:
        assert reply["err"] == "missing-session-id"
        assert [p for p in daemon.root.iterdir() if p.name != ".index"] == []  # .index: the search index
        return
    assert reply["count"] == 1
    files = sorted(p.name for p in daemon.root.iterdir() if p.name != ".index")
    assert all(not name.startswith(".") and len(name) < 200 for name in files), files
    assert all(p.resolve().parent == daemon.root.resolve() for p in daemon.root.iterdir())
    meta = edn_format.loads((daemon.root / next(f for f in files if f.endswith(".meta.edn"))).read_text())
    assert meta[edn_format.Keyword("session-id")] == session_id


def test_ids_that_sanitize_alike_keep_separate_files(daemon):
    for session_id in ("a/b", "a_b", "a b", "a__b"):
        upload(daemon, {"type": "init", "session-id": session_id, "events": [session_id]})
    jsonl = sorted(daemon.root.glob("*.jsonl"))
    assert len(jsonl) == 4
    assert sorted(p.read_text() for p in jsonl) == sorted(f"{i}\n" for i in ("a/b", "a_b", "a b", "a__b"))


def test_two_connections_on_one_session_interleave_without_loss_or_duplicate(daemon):
    # Each connection sends the whole session in its own batch size, so the two overlap all the time.
    with connect(daemon.url + "/upload/ws") as one, connect(daemon.url + "/upload/ws") as two:
        for i in range(0, 200, 2):
            one.send(orjson.dumps({"type": "events", "session-id": "shared", "seq": i, "events": [f"{i}"]}).decode())
            one.send(orjson.dumps({"type": "events", "session-id": "shared", "seq": i + 1,
                                   "events": [f"{i + 1}"]}).decode())
            two.send(orjson.dumps({"type": "events", "session-id": "shared", "seq": i,
                                   "events": [f"{i}", f"{i + 1}"]}).decode())
        replies = [orjson.loads(one.recv(timeout=30)) for _ in range(200)]
        replies += [orjson.loads(two.recv(timeout=30)) for _ in range(100)]
    assert all(reply["type"] == "ack" for reply in replies), [r for r in replies if r["type"] != "ack"][:3]
    assert replies[199]["count"] == 200 and sum(reply["appended"] for reply in replies) == 200
    assert (daemon.root / "shared.jsonl").read_text() == "".join(f"{i}\n" for i in range(200))


def test_par_round_trip_through_the_sidecar(daemon):
    par = {"id": "par-1", "title": "What we learned", "tags": ["stack-hud", "par"],
           "questions": {"intention": "i", "happening": "h", "perspectives": "p", "learned": "l", "forward": "f"},
           "extra": 7}
    first = upload(daemon, {"type": "par", "session-id": "p", "par": par})
    again = upload(daemon, {"type": "par", "session-id": "p", "par": par})
    generated = upload(daemon, {"type": "par", "session-id": "p", "par": {"title": "no id"}})
    assert (first["par-id"], first["dedup"], again["dedup"]) == ("par-1", False, True)
    assert generated["par-id"].startswith("par-") and generated["pars"] == 2
    K = edn_format.Keyword
    stored = edn_format.loads((daemon.root / "p.par.edn").read_text())
    assert len(stored) == 2
    assert stored[0][K("tags")] == (K("stack-hud"), K("par")) or list(stored[0][K("tags")]) == [K("stack-hud"), K("par")]
    assert stored[0][K("questions")][K("learned")] == "l"
    assert stored[0][K("extra")] == 7 and stored[0][K("title")] == "What we learned"
    assert (daemon.root / "p.jsonl").read_bytes() == b""


def test_meta_records_the_session_and_keeps_created_at(daemon):
    K = edn_format.Keyword
    upload(daemon, {"type": "init", "session-id": "m", "project": "/p", "source": "claude", "originator": "laptop",
                    "cwd": "/p", "remote-source": "lab2", "events": ["1", "2"]})
    created = edn_format.loads((daemon.root / "m.meta.edn").read_text())[K("created-at")]
    upload(daemon, {"type": "init", "session-id": "m", "source": "claude", "events": ["1", "2", "3"]})
    daemon.stop()
    meta = edn_format.loads((daemon.root / "m.meta.edn").read_text())
    assert meta[K("created-at")] == created
    assert meta[K("session-id")] == "m" and meta[K("source")] == "claude" and meta[K("cwd")] == "/p"
    assert meta[K("remote-source")] == "lab2" and meta[K("originator")] == "laptop"
    assert meta[K("init/complete")] is True and meta[K("init/event-count")] == 3
    assert meta[K("event-count")] == 3 and meta[K("par-count")] == 0 and K("updated-at") in meta


def test_listings_and_status_show_uploaded_sessions(daemon):
    for session_id, source in (("one", "codex"), ("two", "claude")):
        upload(daemon, {"type": "init", "session-id": session_id, "source": source, "project": "proj",
                        "originator": "laptop", "cwd": "/w", "events": ["x" * 3000]})
    listing = get_json(daemon.http + "/fulab/lab/sessions")
    assert listing["ok"] is True
    assert [s["session-id"] for s in listing["sessions"]] == ["two", "one"]
    two = listing["sessions"][0]
    assert two["source"] == "claude" and two["events"] == 1 and two["size-kb"] == 2 and two["active"] is True
    assert two["path"] == str((daemon.root / "two.jsonl").resolve())
    assert (two["project"], two["originator"], two["cwd"], two["pars"]) == ("proj", "laptop", "/w", 0)
    assert two["uploading"] is False
    active = get_json(daemon.http + "/fulab/lab/sessions/active")
    assert [s["id"] for s in active["sessions"]] == ["two", "one"]
    edn_listing = get_json_edn(daemon.http + "/fulab/lab/sessions?format=edn")
    assert edn_listing[edn_format.Keyword("ok")] is True
    status = get_json(daemon.http + "/fulab/lab/status")
    assert status["running"] is True and status["port"] == daemon.port and status["sessions"] == 2
    assert status["restarts"] == 0 and status["uptime"] >= 0


def test_listing_shows_uploading_while_a_connection_is_open(daemon):
    with connect(daemon.url + "/upload/ws") as ws:
        call(ws, {"type": "init", "session-id": "live", "events": ["x"]})
        assert get_json(daemon.http + "/fulab/lab/sessions")["sessions"][0]["uploading"] is True
        assert get_json(daemon.http + "/fulab/lab/status")["uploads"] == 1
    daemon.wait_for_log(r"upload connection from .* closed")
    assert get_json(daemon.http + "/fulab/lab/sessions")["sessions"][0]["uploading"] is False


def test_restart_after_sigkill_resumes_from_the_stored_count(daemon):
    sample = sample_files()[0]
    lines = sample_lines(sample)
    upload(daemon, {"type": "init", "session-id": "k", "events": lines[:5]})
    daemon.restart(kill=True)
    assert upload(daemon, {"type": "resume", "session-id": "k"})["count"] == 5
    upload(daemon, {"type": "events", "session-id": "k", "seq": 5, "events": lines[5:]})
    assert hashlib.sha256((daemon.root / "k.jsonl").read_bytes()).digest() == hashlib.sha256(
        sample.read_bytes()).digest()


def get_json_edn(url: str):
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["content-type"].startswith("application/edn")
        return edn_format.loads(response.read().decode())
