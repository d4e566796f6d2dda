"""
The uploader's parts in memory: tailing files, telling sessions apart, and what a
sender sends a server too old to know `resume` (a deterministic Clock, no network).
"""

import io
import os

import orjson
from twisted.internet.task import Clock

from fulabd.uploader.connection import MAX_INCOMING_BYTES, describe_close
from fulabd.uploader.identity import NotReady, identify
from fulabd.uploader.progress import Reporter
from fulabd.uploader.sender import BLOCKED, CHECKING, Sender
from fulabd.uploader.window import Budget
from fulabd.uploader.tail import LineReader, Replaced
from fulabd.uploader.uploads import Uploads
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


def test_a_file_rewritten_in_place_past_its_first_bytes_is_reported_not_spliced(tmp_path):
    """The same inode, the same first 4 KiB and no shorter: an edited line before the position and new lines
    after it.  Read on from the old offset, the stored copy got a fragment of a line."""
    path = tmp_path / "s.jsonl"
    head = b"".join(b'{"n":%d,"text":"%s"}\n' % (n, b"x" * 100) for n in range(60))
    path.write_bytes(head + b'{"n":60,"text":"a long line that will be edited"}\n')
    reader = LineReader(str(path))
    assert len(reader.read(1 << 20)) == 61
    with open(path, "r+b") as f:  # rewritten as editors and `open(path, "w")` do: same file, new content
        f.write(head + b'{"n":60,"text":"short"}\n' + b'{"n":61}\n' * 5)
        f.truncate()
    with pytest.raises(Replaced, match="rewritten"):
        reader.read(1 << 20)
    reader.reset()
    assert len(reader.read(1 << 20)) == 66


def test_lines_appended_are_read_on_after_a_seek(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"one\ntwo\n")
    reader = LineReader(str(path))
    assert reader.seek(1)
    with open(path, "ab") as f:
        f.write(b"three\n")
    assert reader.read(100) == [b"two", b"three"]
    with open(path, "ab") as f:
        f.write(b"four\n")
    assert reader.read(100) == [b"four"]


def test_a_close_over_a_message_size_says_whose_message_it_was():
    ours, ended_by_server = describe_close(
        False, 1009, "received WebSocket message size 3000107 exceeds payload limit of 1000000 octets")
    assert ours.startswith("the server refused a message of ours as larger than its --max-message-size")
    assert not ended_by_server, "the server is not restarting"
    theirs, _ = describe_close(False, 1009, f"the server's message of 5000000 bytes exceeds payload limit of "
                                            f"{MAX_INCOMING_BYTES}")
    assert theirs.startswith("the server sent a message over")


def test_a_failed_tls_handshake_is_said_with_what_to_do():
    """Autobahn's words for it, as a wss:// URL to a plain port made them; the advice is the Reporter's."""
    said, ended_by_server = describe_close(
        False, 1006, 'connection was closed uncleanly ("SSL error: wrong version number (in )")')
    assert said == "the TLS handshake failed (wrong version number)" and not ended_by_server
    out = io.StringIO()
    Reporter(stream=out, bar=False, url="wss://lab:5056/x").connect_failed(said)
    assert "that port does not speak TLS: use ws:// for a daemon without TLS" in out.getvalue()
    said, _ = describe_close(False, 1006, 'connection was closed uncleanly ("SSL error: certificate verify failed '
                                          '(in tls_process_server_certificate)")')
    assert said == "the TLS handshake failed (certificate verify failed)"


def test_sessions_the_server_held_whole_are_said_in_one_line_those_with_lines_sent_one_each(tmp_path):
    clock, out = Clock(), io.StringIO()
    reporter = Reporter(stream=out, bar=False, clock=clock)
    senders = []
    for name in "abc":
        path = tmp_path / f"{name}.jsonl"
        write_lines(path, 3)
        senders.append(make_sender(path)[0])
    sent, *held = senders
    reporter.acked(sent, 3, 300, 3)
    for sender in senders:
        reporter.live(sender)
    assert out.getvalue().count("fulab-upload: ") == 1 and f"live {sent.session_id} " in out.getvalue()
    clock.advance(1.0)
    assert out.getvalue().splitlines()[-1] == ("fulab-upload: 2 session(s) already complete on the server: "
                                               "nothing new to send, followed for new lines")
    reporter.live(held[0])
    reporter.say_unchanged()  # a run's end says what was gathered at once
    assert out.getvalue().splitlines()[-1].startswith("fulab-upload: 1 session(s) already complete")
    assert not clock.getDelayedCalls()


def test_a_compressed_file_ends_whole_only_where_a_frame_ends(tmp_path):
    import zstandard

    from fulabd.uploader.compressed import ends_whole

    data = b"".join(b'{"n":%d,"text":"%s"}\n' % (n, b"abc" * (n % 7)) for n in range(50_000))
    whole = zstandard.ZstdCompressor().compress(data)
    checked = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(data)
    runs = zstandard.ZstdCompressor().compress(b"\n" * 1_000_000)  # RLE blocks: one byte stands for many
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"notes"
    for blob, whole_file in ((whole, True), (whole[:len(whole) // 2], False), (checked, True), (checked[:-2], False),
                             (runs, True), (runs[:-1], False), (whole + runs, True), (whole + runs[:-3], False),
                             (whole + skippable, True), (whole + skippable[:-1], False), (b"", True),
                             (b"not zstd at all", False), (whole[:6], False)):
        path = tmp_path / "s.jsonl.zst"
        path.write_bytes(blob)
        assert ends_whole(str(path)) == whole_file, (len(blob), whole_file)


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


def answer(server, count=None):
    """Ack the oldest message the server holds: a resume with `count`, lines with where they end."""
    message, on_reply = server.pending.pop(0)
    on_reply({"type": "ack", "count": message.get("seq", 0) + len(message["events"]) if count is None else count})


def test_what_is_unsent_counts_lines_the_server_holds_as_sent_through_checks_drops_and_stops(tmp_path):
    """A resume's checks move the reader back to line 0, and the last stored line is sent again after them:
    neither makes the stored lines count as unsent, nor does losing the connection or stopping meanwhile."""
    path = tmp_path / "s.jsonl"
    write_lines(path, 50)
    sender, _ = make_sender(path)
    server = OldServer()
    sender.attach(server)
    answer(server, count=0)
    while server.pending:
        answer(server)
    assert sender.caught_up and sender.unsent_bytes() == 0
    sender.detach()
    sender.attach(server)
    answer(server, count=50)
    assert sender.state == CHECKING and sender.unsent_bytes() == 0
    answer(server)  # line 0's check: the last stored line goes again
    assert [message["seq"] for message, _ in server.pending] == [49]
    sender.detach()
    assert sender.unsent_bytes() == 0
    server.pending.clear()
    write_lines(path, 5, start=50)
    sender.attach(server)
    answer(server, count=50)
    answer(server)
    sender.stop()
    answer(server)  # the ack of the last stored line and the 5 new ones comes after the stop
    assert sender.unsent_bytes() == 0
    grown = path.stat().st_size
    write_lines(path, 3, start=55)
    assert sender.unsent_bytes() == path.stat().st_size - grown


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


class ClaimsEverySession(OldServer):
    """A broken or hostile server (the real one cannot be made to lie): every session, whatever its name,
    holds `count` lines unlike the file's."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count
        self.asked = []

    def answer(self):
        while self.pending:
            message, on_reply = self.pending.pop(0)
            on_reply(self.reply(message))

    def reply(self, message):
        if message["type"] == "resume":
            self.asked.append(message["session-id"])
            return {"type": "ack", "session-id": message["session-id"], "count": self.count, "resume": True}
        return {"type": "error", "err": "conflict", "detail": "differs"}


def upload_against(server, tmp_path) -> Uploads:
    """A five-line file's upload, answered by `server` until nothing is pending."""
    path = tmp_path / "s.jsonl"
    write_lines(path, 5)
    uploads = Uploads(Clock(), Events())
    uploads.track(path)
    uploads.connected(server)
    server.answer()
    return uploads


def test_a_server_that_claims_more_lines_than_the_file_stops_the_session_instead_of_spinning_generations(tmp_path):
    server = ClaimsEverySession(1_000_000)
    uploads = upload_against(server, tmp_path)
    base = identify(tmp_path / "s.jsonl", "codex").session_id
    assert server.asked == [base, f"{base}~g2", f"{base}~g3"]
    [blocked] = uploads.problems()
    assert blocked.state == BLOCKED and blocked.problem.startswith("server-ahead: the server claims 1000000 lines")
    assert uploads.caught_up, "a stopped session does not keep --once waiting"


# The connection's protocol, over an in-memory transport.

def open_client(clock, uploads, response: bytes | None = None, token: str | None = None):
    """The uploader's client protocol after the server's `response` to its handshake (by default a 101)."""
    import base64
    import hashlib
    import re

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from fulabd.uploader.connection import UploadClientFactory

    class TCPLikeTransport(StringTransport):
        """As a TCP transport: unregistering no producer is not an error."""

        def unregisterProducer(self):
            self.producer = None

    factory = UploadClientFactory("ws://127.0.0.1:5056/fulab/lab/upload/ws", uploads, token=token, reactor=clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5056))
    transport = TCPLikeTransport()
    protocol.makeConnection(transport)
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.value())[1]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    transport.clear()
    protocol.dataReceived(response or b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return protocol, transport


def test_a_message_from_the_server_over_one_mib_drops_the_connection_before_it_is_read():
    import io
    import struct

    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from fulabd.uploader.progress import Reporter

    clock = Clock()
    output = io.StringIO()
    uploads = Uploads(clock, Reporter(stream=output, clock=clock, url="ws://127.0.0.1:5056/fulab/lab/upload/ws"))
    protocol, transport = open_client(clock, uploads)
    assert uploads.channel is protocol
    transport.clear()
    protocol.dataReceived(bytes([0x81, 127]) + struct.pack("!Q", 3 << 30) + b"x" * 4096)
    assert transport.disconnecting or transport.disconnected, "dropped at the frame's header"
    protocol.connectionLost(Failure(ConnectionDone()))
    assert uploads.channel is None
    assert "the server sent a message over the 1048576 bytes the uploader accepts" in output.getvalue()


# Compressed rollouts (`.jsonl.zst`).

def compress(source, target):
    import zstandard

    target.write_bytes(zstandard.ZstdCompressor().compress(source.read_bytes()))
    return target


def test_a_compressed_file_reads_as_the_same_lines_and_seeks_by_line(tmp_path):
    source = tmp_path / "s.jsonl"
    write_lines(source, 3000)
    reader = LineReader(str(compress(source, tmp_path / "s.jsonl.zst")))
    lines = []
    while batch := reader.read(10_000):
        lines += batch
    assert lines == source.read_bytes().split(b"\n")[:-1]
    assert reader.seek(2500) and reader.read(1) == [lines[2500]]
    assert reader.seek(100) and reader.read(1) == [lines[100]], "back to an earlier line"
    assert not reader.seek(3001)


def test_a_compressed_file_is_the_same_session_as_its_uncompressed_form(tmp_path):
    for sample in sample_files():
        folder = tmp_path / sample.relative_to(SAMPLES).parent
        folder.mkdir(parents=True, exist_ok=True)
        compressed = compress(sample, folder / (sample.name + ".zst"))
        assert identify(compressed) == identify(sample), sample


def test_a_damaged_compressed_file_stops_its_session_with_the_reason(tmp_path):
    from fulabd.uploader.compressed import Unreadable
    from fulabd.uploader.connection import UploadClientFactory
    from tests.memory import Lab

    source = tmp_path / "s.jsonl"
    write_lines(source, 40_000)  # several zstd blocks: the first ones decompress
    data = compress(source, tmp_path / "whole.zst").read_bytes()
    damaged = tmp_path / "s.jsonl.zst"
    damaged.write_bytes(data[:len(data) // 2] + bytes(64) + data[len(data) // 2 + 64:])
    reader = LineReader(str(damaged))
    with pytest.raises(Unreadable, match="does not decompress"):
        while reader.read(10_000):
            pass
    lab = Lab(tmp_path / "remote")
    try:
        uploads = Uploads(lab.clock, Events(), source="codex", max_frame_bytes=1 << 20)
        sender = uploads.track(damaged)
        lab.connect(UploadClientFactory("ws://127.0.0.1:5056/fulab/lab/upload/ws", uploads, reactor=lab.clock))
        lab.flush()
        assert sender.state == BLOCKED and sender.problem.startswith("unreadable: ")
        assert uploads.problems() == [sender] and uploads.caught_up
        with open(lab.store.get(sender.session_id).path, "rb") as stored:
            before_damage = stored.read()
        assert len(before_damage) > 1_000_000, "the lines before the damage are uploaded"
        assert source.read_bytes().startswith(before_damage) and before_damage.endswith(b"\n")
    finally:
        lab.close()


def test_generations_stop_at_the_cap_with_the_reason(tmp_path):
    from fulabd.uploader.uploads import MAX_GENERATIONS

    uploads = upload_against(ClaimsEverySession(3), tmp_path)  # fewer lines than the file: a plain conflict
    [blocked] = uploads.problems()
    assert blocked.generation == MAX_GENERATIONS
    assert f"rewritten {MAX_GENERATIONS} times in this run" in blocked.problem
    assert uploads.caught_up


@pytest.mark.parametrize("status, token, said", [
    (b"401 Unauthorized", None, "the server needs a token (HTTP 401); pass --token or set FULAB_TOKEN"),
    (b"403 Forbidden", "t0ken", "the server refused the token (HTTP 403); check --token / FULAB_TOKEN"),
    (b"404 Not Found", None, "the server answered HTTP 404 Not Found instead of a WebSocket; nothing serves that "
                             "URL path: use a URL ending in /fulab/lab/upload/ws"),
    (b"502 Bad Gateway", None, "HTTP 502 Bad Gateway instead of a WebSocket; the proxy in front of the server could "
                               "not reach it"),
])
def test_a_refused_upgrade_names_its_http_status_and_what_to_do(status, token, said):
    import io

    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from fulabd.uploader.progress import Reporter

    clock = Clock()
    output = io.StringIO()
    uploads = Uploads(clock, Reporter(stream=output, clock=clock, url="ws://lab/fulab/lab/upload/ws"))
    protocol, transport = open_client(clock, uploads, b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n",
                                      token=token)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert said in output.getvalue()
    assert protocol.factory.refused_handshakes == 1, "counted for the backoff"
    assert "connected" not in output.getvalue()


class Said(Events):
    def say(self, text, always=False):
        self.seen.append(("say", text))


def test_a_file_that_cannot_be_read_is_said_once_and_taken_up_once_it_can(tmp_path, monkeypatch):
    """Root (as the tests run) reads a file whatever its mode, so a chmod 000 file's refusal is played by `open`.
    Before, the refusal escaped the watcher's start (nothing else was looked at) or its poll (which stopped)."""
    import builtins

    from fulabd.uploader import compressed, tail
    from fulabd.uploader.connection import UploadClientFactory
    from tests.memory import Lab

    path = tmp_path / "s.jsonl"
    write_lines(path, 5)
    denied = [True]
    real_open = builtins.open

    def guarded_open(name, *args, **kw):
        if denied[0] and str(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kw)

    monkeypatch.setattr(compressed, "open", guarded_open, raising=False)
    monkeypatch.setattr(tail, "open", guarded_open, raising=False)
    lab = Lab(tmp_path / "remote")
    try:
        said = Said()
        uploads = Uploads(lab.clock, said, source="codex")
        lab.connect(UploadClientFactory("ws://127.0.0.1:5056/fulab/lab/upload/ws", uploads, reactor=lab.clock))
        lab.flush()
        assert uploads.track(path) is None and uploads.track(path) is None
        assert said.seen.count(("say", f"cannot read {path} (Permission denied); it is uploaded once it can be "
                                       "read")) == 1
        assert uploads.unreadable == {str(path): "Permission denied"}
        denied[0] = False
        sender = uploads.track(path)
        lab.flush()
        assert uploads.unreadable == {} and lab.store.get(sender.session_id).count == 5
        write_lines(path, 2, start=5)
        denied[0] = True
        sender.pump()  # the poll, after the file changed
        assert str(path) not in uploads.senders and uploads.unreadable == {str(path): "Permission denied"}
        denied[0] = False
        again = uploads.track(path)  # the watcher's next look
        lab.flush()
        with open(lab.store.get(again.session_id).path, "rb") as stored:
            assert stored.read() == path.read_bytes()  # from what the server held: nothing twice
    finally:
        lab.close()
