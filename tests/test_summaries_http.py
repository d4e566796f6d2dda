"""
Summaries through the real daemon: a Codex and a Claude session uploaded over the WebSocket are summarized as
their lines arrive, listed with their summary and `live`, served at GET /fulab/lab/sessions/<id> as JSON and
EDN, and read again from the files after a restart; local sessions (--claude-dir) are summarized and served too.
"""

import re
import shutil
import urllib.error
import urllib.request

import edn_format
import orjson
import pytest
from websockets.sync.client import connect

from fulabd.edn import from_edn
from tests.fixtures import SAMPLES as SAMPLE_ROOT
from tests.fixtures import Daemon, get_json, sample_files, sample_lines
from tests.summary_expectations import expected

pytestmark = pytest.mark.slow

SAMPLES = {"codex": "rollout-2026-06-05T10-28-20-019e9625", "claude": "1af7fc5e"}
FIELDS = ("title", "started", "ended", "duration-s", "models", "turns", "tool-calls", "tool-errors",
          "files-touched", "commands", "subagents", "tokens", "cost-usd")


def upload(daemon, source: str) -> tuple[str, dict]:
    path = next(p for p in sample_files() if p.name.startswith(SAMPLES[source]))
    session_id = f"{source}-sample"
    lines = sample_lines(path)
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        for first in range(0, len(lines), 5):
            message = {"type": "init", "source": source, "project": "/home/dev/p"} if first == 0 else {
                "type": "events", "seq": first}
            ws.send(orjson.dumps({"session-id": session_id, **message, "events": lines[first:first + 5]}).decode())
            assert orjson.loads(ws.recv(timeout=30))["type"] == "ack"
    return session_id, expected(path, source)


def listing(daemon) -> dict:
    return {entry["session-id"]: entry for entry in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]}


def test_uploaded_sessions_are_summarized_listed_and_served(daemon):
    uploaded = dict(upload(daemon, source) for source in SAMPLES)
    entries = listing(daemon)
    for session_id, want in uploaded.items():
        entry = entries[session_id]
        assert entry["live"] is True
        assert {field: entry["summary"][field] for field in FIELDS if field != "files-touched"} == {
            field: want[field] for field in FIELDS if field != "files-touched"}
        served = get_json(f"{daemon.http}/fulab/lab/sessions/{entry['id']}")
        assert served["ok"] is True
        assert {field: served["summary"][field] for field in FIELDS} == {field: want[field] for field in FIELDS}
        assert served["summary"]["project"] == "/home/dev/p"
        with urllib.request.urlopen(f"{daemon.http}/fulab/lab/sessions/{entry['id']}?format=edn") as response:
            assert response.headers["content-type"].startswith("application/edn")
            assert from_edn(edn_format.loads(response.read().decode()))["summary"]["title"] == want["title"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{daemon.http}/fulab/lab/sessions/no-such-session")
    assert refused.value.code == 404
    assert orjson.loads(refused.value.read())["err"] == "unknown-session"

    daemon.restart()
    daemon.wait_for_log(r"summaries of 2 sessions are up to date")
    after = listing(daemon)
    for session_id in uploaded:
        assert after[session_id]["live"] is False  # nothing has arrived since the restart
        assert after[session_id]["summary"] == entries[session_id]["summary"]


def summary_of(daemon, ident: str) -> dict:
    """The served summary; if it is still being read (503), the one served once the daemon says it has read it."""
    read = r"summaries of \d+ sessions are up to date|read the summaries of \d+ more sessions"
    logged = sum(1 for line in daemon.log if re.search(read, line))
    try:
        return get_json(f"{daemon.http}/fulab/lab/sessions/{ident}")["summary"]
    except urllib.error.HTTPError as pending:
        assert pending.code == 503 and pending.headers["retry-after"] == "1"
    daemon.wait_for_log(read, count=logged + 1)
    return get_json(f"{daemon.http}/fulab/lab/sessions/{ident}")["summary"]


def test_local_sessions_are_summarized_and_served_too(tmp_path):
    folder = tmp_path / "projects"
    shutil.copytree(SAMPLE_ROOT / "claude" / "projects", folder)
    daemon = Daemon(tmp_path / "remote", "--claude-dir", str(folder)).start()
    try:
        daemon.wait_for_log(r"following 4 local claude sessions")
        listed = {e["session-id"]: e for e in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]}
        for path in folder.rglob("*.jsonl"):
            want = expected(path, "claude")
            served = summary_of(daemon, listed[path.stem]["id"])
            assert {field: served[field] for field in FIELDS} == {field: want[field] for field in FIELDS}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{daemon.http}/fulab/lab/sessions/{next(iter(listed))}/pars")
        assert refused.value.code == 404 and "not an uploaded session" in orjson.loads(refused.value.read())["detail"]
        for path in folder.rglob("*.jsonl"):  # a local session is exported like an uploaded one, titled by its summary
            with urllib.request.urlopen(f"{daemon.http}/fulab/lab/sessions/{listed[path.stem]['id']}/export") as got:
                assert got.read().decode().startswith(f"# {expected(path, 'claude')['title']}")
    finally:
        daemon.stop()
