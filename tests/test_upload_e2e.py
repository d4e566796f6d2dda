"""
The upload endpoint of a real daemon, driven by an independent WebSocket client: what needs the daemon's
own wiring or process (listings over HTTP, a SIGKILL).  The protocol's rules are in test_upload_protocol.py.
"""

import hashlib

import edn_format
import orjson
import pytest
from websockets.sync.client import connect

from tests.fixtures import get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


def upload(daemon, message: dict, path: str = "/fulab/lab/upload/ws") -> dict:
    with connect(daemon.url + path, max_size=None) as ws:
        return call(ws, message)


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
