"""
The uploader's parts in memory: tailing files, telling sessions apart, and what a
sender sends a server too old to know `resume` (a deterministic Clock, no network).
"""

import os

import orjson
from twisted.internet.task import Clock

from fulabd.uploader.identity import NotReady, identify
from fulabd.uploader.sender import Budget, Sender
from fulabd.uploader.tail import LineReader, Replaced
from tests.fixtures import SAMPLES, sample_files

import pytest


# Tailing.

def test_partial_last_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":')
    reader = LineReader(str(path))
    assert reader.read(1 << 20) == [b'{"a":1}']
    assert reader.read(1 << 20) == []
    with open(path, "ab") as out:
        out.write(b'2}\n{"c"')
    assert reader.read(1 << 20) == [b'{"b":2}']
    assert (reader.position.index, reader.position.offset) == (2, 16)


def test_reads_are_bounded_but_a_bigger_line_still_comes_whole(tmp_path):
    path = tmp_path / "s.jsonl"
    big = b"x" * 3_000_000
    path.write_bytes(b"a\n" * 10 + big + b"\n" + b"b\n")
    reader = LineReader(str(path))
    assert reader.read(8) == [b"a"] * 4
    assert len(reader.read(100)) == 6
    assert reader.read(100) == [big]
    assert reader.read(100) == [b"b"]


def test_seek_finds_a_line_by_count_and_refuses_past_the_end(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"zero\none\ntwo\nthr")
    reader = LineReader(str(path))
    assert reader.seek(2)
    assert reader.read(100) == [b"two"]
    assert not reader.seek(4)
    assert reader.seek(3) and reader.read(100) == []


def test_shrink_replace_and_rewrite_are_reported(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"one\ntwo\n")
    reader = LineReader(str(path))
    reader.read(100)
    path.write_bytes(b"one\n")
    with pytest.raises(Replaced, match="shrank"):
        reader.read(100)

    reader = LineReader(str(path))
    reader.read(100)
    path.write_bytes(b"ONE\ntwo\nthree\n")
    with pytest.raises(Replaced, match="rewritten"):
        reader.read(100)

    reader = LineReader(str(path))
    reader.read(100)
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"ONE\ntwo\nthree\nfour\n")
    os.replace(other, path)
    with pytest.raises(Replaced, match="replaced"):
        reader.read(100)


# Identity.

def test_codex_session_id_and_metadata_come_from_the_first_session_meta():
    rollout = next(p for p in sample_files() if p.name.startswith("rollout-"))
    identity = identify(rollout)
    assert identity.session_id == "019e9625-802f-7e91-840a-cfe88d14117a"
    assert identity.meta == {"source": "codex", "cwd": "/tmp/agent-history-real-agent/codex/workspace",
                             "project": "/tmp/agent-history-real-agent/codex/workspace",
                             "originator": "codex_exec"}
    overridden = identify(rollout, overrides={"project": "p", "originator": "laptop", "cwd": None})
    assert (overridden.meta["project"], overridden.meta["originator"]) == ("p", "laptop")


def test_legacy_codex_file_is_identified_by_its_first_line_id(tmp_path):
    path = tmp_path / "rollout-2025-09-10T10-00-00-cf4def41.jsonl"
    path.write_bytes(b'{"id":"cf4def41-0000-4000-8000-000000000000","timestamp":"2025-09-10T10:00:00Z"}\n'
                     b'{"type":"message","role":"user","content":[]}\n')
    assert identify(path).session_id == "cf4def41-0000-4000-8000-000000000000"
    assert identify(path).meta == {"source": "codex"}


def test_claude_session_and_subagent_ids():
    session = SAMPLES / "claude" / "projects" / "-path-to-Demo" / "fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"
    identity = identify(session)
    assert identity.session_id == "fe5e1c67-53e7-4862-81ae-d0e013e3270b"
    assert identity.meta == {"source": "claude", "cwd": "/path/to/Demo", "project": "/path/to/Demo"}
    subagent = next(p for p in sample_files() if p.parent.name == "subagents")
    parent = subagent.parent.parent.name
    assert identify(subagent).session_id == f"{parent}/agent-a0ad4f44468bdf20d"
    assert identify(subagent).meta["parent-session-id"] == parent


def test_claude_2_0_sibling_agent_file_is_its_own_session_under_its_parent(tmp_path):
    parent = "fe5e1c67-53e7-4862-81ae-d0e013e3270b"
    path = tmp_path / "-path-to-Demo" / "agent-3f2a9c1b.jsonl"
    path.parent.mkdir()
    path.write_bytes(orjson.dumps({"type": "user", "sessionId": parent, "agentId": "3f2a9c1b", "cwd": "/p"}) + b"\n")
    identity = identify(path)
    assert identity.session_id == f"{parent}/agent-3f2a9c1b"
    assert identity.meta == {"source": "claude", "cwd": "/p", "project": "/p", "parent-session-id": parent}


def test_a_file_without_a_complete_line_is_not_ready(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"type":"session_meta","payl')
    with pytest.raises(NotReady):
        identify(path)


def test_generations_are_named_and_point_at_the_first():
    session = SAMPLES / "claude" / "projects" / "-path-to-Demo" / "fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"
    second = identify(session).generation(2)
    assert second.session_id == "fe5e1c67-53e7-4862-81ae-d0e013e3270b~g2"
    assert second.meta["parent-session-id"] == "fe5e1c67-53e7-4862-81ae-d0e013e3270b"


# What a sender sends an old server (the Clojure lab-ws, which cannot run here); the rest of the
# sender's behaviour is tested against the real server in test_uploader_protocol.py.

class OldServer:
    """Takes messages and answers none of them by itself (the test answers for it)."""

    packer = None  # speaks JSON text frames only

    def __init__(self, legacy=False):
        self.legacy = legacy
        self.pending = []

    def send(self, payload, on_reply, binary=False):
        self.pending.append((orjson.loads(payload), on_reply))


class Events:
    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        return lambda sender, *args, **kw: self.seen.append((name, *args, *kw.values()))


def make_sender(path, budget=None, frame=1000):
    events = Events()
    sender = Sender(identify(path, "codex"), LineReader(str(path)), budget or Budget(), events, Clock(),
                    max_frame_bytes=frame)
    return sender, events


def write_lines(path, count, start=0):
    with open(path, "ab") as out:
        for index in range(start, start + count):
            out.write(orjson.dumps({"line": index, "pad": "p" * 80}) + b"\n")


def test_an_old_server_without_resume_gets_init_and_events(tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, 3)
    server = OldServer()
    sender, _ = make_sender(path, frame=100)
    sender.attach(server)
    message, on_reply = server.pending.pop(0)
    on_reply({"type": "error", "err": "unknown-type", "detail": "unknown message type 'resume'"})
    kinds = [message["type"] for message, _ in server.pending]
    assert kinds[0] == "init" and set(kinds[1:]) == {"event"}
    assert [m.get("seq") for m, _ in server.pending[1:]] == [1, 2]


def test_a_server_that_ignores_resume_is_told_by_the_pong_of_a_probe():
    from fulabd.uploader.connection import Replies

    replies, got = Replies(), []
    replies.expect(lambda reply: got.append(("resume a", reply)))
    replies.expect(lambda reply: got.append(("resume b", reply)))
    replies.probe()
    replies.expect(lambda reply: got.append(("init", reply)))
    assert replies.deliver({"type": "pong"})
    assert replies.legacy
    assert [(name, reply["err"]) for name, reply in got] == [("resume a", "unknown-type"), ("resume b", "unknown-type")]
    assert replies.deliver({"type": "ack", "session-id": "a"})
    assert got[-1] == ("init", {"type": "ack", "session-id": "a"})

    replies, got = Replies(), []
    replies.expect(got.append)
    replies.probe()
    assert replies.deliver({"type": "ack", "count": 0}) and replies.deliver({"type": "pong"})
    assert not replies.legacy and got == [{"type": "ack", "count": 0}]
    assert not replies.deliver({"type": "ack"})


def test_on_a_legacy_connection_a_session_goes_from_its_start_without_resume(tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, 3)
    server = OldServer(legacy=True)
    sender, events = make_sender(path, frame=100)
    sender.attach(server)
    assert [message["type"] for message, _ in server.pending] == ["init", "event", "event"]
    assert events.seen[0][0] == "warning"


def test_only_writes_creations_and_moves_of_session_files_wake_the_uploader():
    from watchdog import events

    from fulabd.uploader.watch import written_session_files

    assert written_session_files(events.FileModifiedEvent("/s/a.jsonl")) == ["/s/a.jsonl"]
    assert written_session_files(events.FileClosedEvent("/s/a.jsonl")) == ["/s/a.jsonl"]
    assert written_session_files(events.FileMovedEvent("/s/a.tmp", "/s/b.jsonl")) == ["/s/b.jsonl"]
    assert written_session_files(events.FileCreatedEvent(b"/s/c.jsonl")) == ["/s/c.jsonl"]
    # Our own reads open and close the file: reacting to that would read again, forever.
    assert written_session_files(events.FileOpenedEvent("/s/a.jsonl")) == []
    assert written_session_files(events.FileClosedNoWriteEvent("/s/a.jsonl")) == []
    assert written_session_files(events.FileModifiedEvent("/s/notes.txt")) == []
    assert written_session_files(events.DirModifiedEvent("/s/x.jsonl")) == []
