"""
Local sources (--codex-dir, --claude-dir) of a real daemon: listed beside
uploads, streamed, and followed live as agents append, partial lines included.
"""

import shutil

import edn_format
import pytest

from tests.fixtures import SAMPLES, Daemon, get_json, sample_files
from tests.test_stream_e2e import line_indexes, read_history, receive, refusal, store, viewer

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)

CODEX_ID = "019e9625-802f-7e91-840a-cfe88d14117a"


@pytest.fixture
def local(tmp_path):
    """A daemon following copies of the real sample folders (the curated ones too)."""
    codex, claude = tmp_path / "codex-sessions", tmp_path / "claude-projects"
    # Copied without their old times: written just now, as an agent's live files are (and so active).
    fresh = {"copy_function": shutil.copy}
    shutil.copytree(SAMPLES / "codex" / "sessions", codex, **fresh)
    shutil.copytree(SAMPLES / "claude" / "projects", claude, **fresh)
    shutil.copytree(SAMPLES / "claude" / "curated-not-real" / "subagent-layout", claude / "-tmp-subagents", **fresh)
    for folder in (codex, claude):
        for path in folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    daemon = Daemon(tmp_path / "remote", "--codex-dir", str(codex), "--claude-dir", str(claude)).start()
    daemon.codex, daemon.claude = codex, claude
    daemon.wait_for_log(r"following 1 local codex sessions")
    daemon.wait_for_log(r"following 5 local claude sessions")
    yield daemon
    daemon.stop()


def listing(daemon, which: str = "") -> dict:
    return {entry["session-id"]: entry for entry in get_json(daemon.http + "/fulab/lab/sessions" + which)["sessions"]}


def append(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


def test_local_sessions_are_listed_with_their_source_and_id(local):
    store(local, "uploaded", ['{"a":1}'])
    for which in ("", "/active"):
        entries = listing(local, which)
        codex = entries[CODEX_ID]
        assert (codex["source"], codex["events"], codex["cwd"], codex["originator"]) == (
            "codex", 11, "/tmp/agent-history-real-agent/codex/workspace", "codex_exec")
        for path in (local.claude / "-path-to-Demo").glob("*.jsonl"):
            entry = entries[path.stem]
            assert (entry["source"], entry["path"], entry["events"]) == (
                "claude", str(path), path.read_bytes().count(b"\n"))
        assert "0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f" in entries
        assert not [entry for entry in entries.values() if "/subagents/" in entry["path"]]
        assert entries["uploaded"]["path"] == str(local.root / "uploaded.jsonl")


def test_local_session_streams_and_follows_appends_holding_partial_lines(local):
    codex_path = next(local.codex.rglob("*.jsonl"))
    claude_path = local.claude / "-path-to-Demo" / "1af7fc5e-8455-4414-9ccd-011d40f70b2a.jsonl"
    codex_lines = codex_path.read_bytes().split(b"\n")[:-1]
    claude_lines = claude_path.read_bytes().split(b"\n")[:-1]
    with viewer(local, path=str(codex_path)) as codex_ws, \
            viewer(local, "/fulab/lab/stream/ws", session=claude_path.stem) as claude_ws:
        head, history, end = read_history(codex_ws)
        assert (head["session-id"], head["line-count"], end["line-count"]) == (CODEX_ID, 11, 11)
        assert read_history(claude_ws)[2]["line-count"] == len(claude_lines)
        new_line = codex_lines[5]  # a real response_item line, appended again as line 11
        append(codex_path, new_line[:40])
        append(claude_path, claude_lines[3] + b"\n")
        # the claude line arriving shows the daemon has handled the earlier partial write to the codex file
        assert receive(claude_ws)["event"]["line"] == len(claude_lines)
        append(codex_path, new_line[40:] + b"\n" + codex_lines[8] + b"\n")
        first, second = receive(codex_ws)["event"], receive(codex_ws)["event"]
        assert (first["line"], first["type"], first["text"]) == (11, "user", "[REDACTED_PROMPT]")
        assert (second["line"], second["type"]) == (12, "assistant")
        sidecar = codex_path.with_name(codex_path.name[:-len(".jsonl")] + ".par.edn")
        sidecar.write_bytes(edn_format.dumps([{edn_format.Keyword("id"): "par-local",
                                               edn_format.Keyword("title"): "Local"}]).encode())
        par = receive(codex_ws)["event"]
        assert (par["type"], par["par-id"], par["text"]) == ("par", "par-local", "## PAR: Local\n\n")
    assert listing(local)[CODEX_ID]["events"] == 13


def test_new_local_files_are_found_and_outside_files_refused(local):
    folder = local.claude / "-tmp-new"
    folder.mkdir()
    path = folder / "11111111-2222-3333-4444-555555555555.jsonl"
    real = next(p for p in sample_files() if p.name.startswith("06090cb1"))
    path.write_bytes(real.read_bytes())
    local.wait_for_log(r"new local claude session .*11111111-2222-3333-4444-555555555555\.jsonl")
    with viewer(local, path=str(path)) as ws:
        _, history, _ = read_history(ws)
        while len(history) < 5:  # the file may have been indexed while it was being written
            history.append(receive(ws)["event"])
    assert line_indexes(history) == [0, 1, 2, 3, 4]
    (local.claude.parent / "outside.jsonl").write_bytes(real.read_bytes())
    for asked in (str(local.claude.parent / "outside.jsonl"), f"{local.claude}/../outside.jsonl",
                  str(next(local.claude.rglob("agent-*.jsonl"))), f"{path}\0"):
        assert refusal(local, path=asked)["err"] == "invalid-path"


def test_files_created_empty_rewritten_or_deleted_are_followed(local):
    real = next(local.codex.rglob("*.jsonl"))
    lines = real.read_bytes().split(b"\n")[:-1]
    fresh = real.with_name("rollout-2026-06-06T10-00-00-019e9999-0000-7000-8000-000000000001.jsonl")
    fresh.touch()  # Codex creates the file, then writes session_meta first
    local.wait_for_log(r"new local codex session .*019e9999-0000-7000-8000-000000000001\.jsonl \(0 lines\)")
    with viewer(local, path=str(fresh)) as ws:
        assert read_history(ws)[2]["line-count"] == 0
        append(fresh, b"\n".join(lines[:3]) + b"\n")
        assert [receive(ws)["event"]["line"] for _ in range(3)] == [0, 1, 2]
    entry = next(entry for entry in get_json(local.http + "/fulab/lab/sessions")["sessions"]
                 if entry["path"] == str(fresh))
    # the id is the first session_meta's, not the file name's
    assert (entry["session-id"], entry["cwd"]) == (CODEX_ID, "/tmp/agent-history-real-agent/codex/workspace")
    real.write_bytes(b"\n".join(lines[:2]) + b"\n")
    local.wait_for_log(r"local session .*019e9625.*\.jsonl shrank")
    fresh.unlink()
    local.wait_for_log(r"local session .*019e9999.*\.jsonl is gone")
    assert [entry["events"] for entry in listing(local).values() if entry["source"] == "codex"] == [2]


def test_a_large_append_reaches_a_viewer_whole_and_in_order(local):
    path = local.claude / "-path-to-Demo" / "fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"
    lines = path.read_bytes().split(b"\n")[:-1]
    with viewer(local, path=str(path)) as ws:
        read_history(ws)
        append(path, b"\n".join(lines * 12) + b"\n")  # derived: 9 MB written at once, read in bounded chunks
        live = [receive(ws)["event"] for _ in range(len(lines) * 12)]
    assert line_indexes(live) == list(range(len(lines), len(lines) * 13))
