"""
The uploader's sessions (`Uploads`, `Sender`) and its client protocol against
the real server in memory (tests/memory.py): the server's own protocol and
store decide every ack, gap and conflict, and its commits run when the test
says.
"""

import errno
import os

import orjson
import pytest

from fulabd import packed
from fulabd.uploader.connection import UploadClientFactory, UploadClientProtocol
from fulabd.uploader.sender import BLOCKED, STREAMING
from fulabd.uploader.window import Budget
from fulabd.uploader.uploads import STOP_TIMEOUT, Uploads
from tests.memory import Commits, Lab
from tests.test_uploader_units import Events, write_lines


class RecordingClient(UploadClientProtocol):
    """The uploader's own client protocol, noting what goes each way, in order."""

    def __init__(self):
        super().__init__()
        self.traffic: list[tuple[str, dict]] = []

    def send(self, payload, on_reply, binary=False):
        if binary and not hasattr(self, "unpacker"):  # the server's end of the packed frames, to read them alike
            self.unpacker = packed.Unpacker(stream=self.packer.stream)
        self.traffic.append(("sent", as_text_message(payload, self.unpacker) if binary else orjson.loads(payload)))
        super().send(payload, on_reply, binary)

    def onMessage(self, payload, isBinary):
        self.traffic.append(("got", orjson.loads(payload)))
        super().onMessage(payload, isBinary)


def as_text_message(payload: bytes, unpacker: packed.Unpacker) -> dict:
    """A packed frame as the JSON message it stands for (the tests read both alike)."""
    header, _, _ = payload.partition(b"\n")
    message = unpacker.decode(payload, 1 << 30)
    return dict(orjson.loads(header), events=[line.decode() for line in message.lines])


def connect(lab, uploads) -> RecordingClient:
    factory = UploadClientFactory("ws://127.0.0.1:5056/fulab/lab/upload/ws", uploads, reactor=lab.clock)
    factory.protocol = RecordingClient
    client = lab.connect(factory)
    assert client.opened
    return client


def disconnect(lab, client):
    client.close()
    lab.flush()


@pytest.fixture
def pending(tmp_path):
    """A server whose commits run only when the test says: its acks wait for them."""
    site = Lab(tmp_path / "remote", commits=Commits(at_once=False))
    yield site
    site.close()


def uploads_of(lab, **options) -> tuple[Uploads, Events]:
    events = Events()
    return Uploads(lab.clock, events, source="codex", **options), events


def file_lines(path) -> list[str]:
    return path.read_bytes().decode().split("\n")[:-1]


def stored(lab, session_id: str) -> bytes:
    session = lab.store.get(session_id)
    with open(session.path, "rb") as f:
        return f.read()


def hold(lab, session_id: str, lines: list[str]):
    """The server holds `lines` for the session, as an earlier upload left them."""
    client = lab.client()
    client.send({"type": "init", "session-id": session_id, "events": lines})
    lab.flush()
    lab.commits.run()
    lab.flush()
    assert client.take()[0]["count"] == len(lines)
    client.sendClose(1000)
    lab.flush()


def test_window_bounds_what_is_in_flight_however_big_the_file(pending, tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, 5000)
    uploads, _ = uploads_of(pending, budget=Budget(max_bytes=10_000, max_batches=4), max_frame_bytes=2000)
    sender = uploads.track(path)
    connect(pending, uploads)
    while pending.commits.queued:
        assert len(sender.inflight) <= 4 and sum(batch.size for batch in sender.inflight) < 10_000 + 2000
        assert all(batch.size <= 2000 for batch in sender.inflight)
        pending.commits.run()
        pending.flush()
    assert stored(pending, sender.session_id) == path.read_bytes()
    assert sender.caught_up and sender.state == STREAMING and uploads.caught_up


def test_reconnect_resumes_from_the_server_count_with_checks(lab, tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, 50)
    lines = file_lines(path)
    uploads, _ = uploads_of(lab, max_frame_bytes=1000)
    sender = uploads.track(path)
    hold(lab, sender.session_id, lines[:30])
    client = connect(lab, uploads)
    sent = [message for way, message in client.traffic if way == "sent"]
    checks = sent[1:9]
    assert [(check["seq"], check["events"]) for check in checks] == [(i, [lines[i]]) for i in (0, 3, 7, 11, 15, 18, 22, 26)]
    overlap = sent[9]
    assert overlap["seq"] == 29 and overlap["events"][0] == lines[29]
    # nothing new is sent before every check is acknowledged
    acks_before = client.traffic[:client.traffic.index(("sent", overlap))]
    assert sum(way == "got" and message["type"] == "ack" for way, message in acks_before) == 1 + 8
    assert stored(lab, sender.session_id) == path.read_bytes()

    disconnect(lab, client)
    write_lines(path, 10, start=50)  # the file grows while the uploader is offline
    client = connect(lab, uploads)
    sent = [message for way, message in client.traffic if way == "sent"]
    assert sent[0]["type"] == "resume"
    assert [message["seq"] for message in sent[1:3]] == [0, 49]  # line 0 checked, the last stored one resent
    assert stored(lab, sender.session_id) == path.read_bytes() and sender.caught_up


@pytest.mark.parametrize("file_length, held_by_server", [
    (50, lambda lines: lines[:20] + ["changed"] + lines[21:40]),  # rewritten between the first and last stored
    (20, lambda lines: ["something else"] * 10),                   # another file's lines
    (5, lambda lines: lines + ['{"line": 5}']),                    # more lines than the file has
], ids=["rewritten-in-the-middle", "other-lines", "more-lines-than-the-file"])
def test_a_server_copy_that_disagrees_is_a_conflict_not_a_splice(lab, tmp_path, file_length, held_by_server):
    path = tmp_path / "s.jsonl"
    write_lines(path, file_length)
    held = held_by_server(file_lines(path))
    uploads, events = uploads_of(lab)
    sender = uploads.track(path)
    hold(lab, sender.session_id, held)
    before = stored(lab, sender.session_id)
    connect(lab, uploads)
    assert sender.state == BLOCKED
    assert [event[0] for event in events.seen if event[0] == "conflict"] == ["conflict"]
    assert stored(lab, sender.session_id) == before
    successor = uploads.senders[str(path)]
    assert successor.session_id == sender.session_id + "~g2"
    assert stored(lab, successor.session_id) == path.read_bytes()  # the file goes up as the next generation


def test_a_refused_batch_is_resent_after_a_fresh_resume(lab, tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    write_lines(path, 40)
    real_fdatasync = os.fdatasync
    failures = []

    def fails_once(fd):  # a disk error: the one fault here that cannot be made real
        if not failures:
            failures.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fails_once)
    uploads, events = uploads_of(lab, max_frame_bytes=500)
    sender = uploads.track(path)
    connect(lab, uploads)
    errors = [event[1] for event in events.seen if event[0] == "error"]
    assert [error["err"] for error in errors] == ["storage-failed"] and failures
    assert not sender.caught_up
    lab.clock.advance(5)
    lab.flush()
    assert stored(lab, sender.session_id) == path.read_bytes() and sender.caught_up


def test_stop_waits_for_the_acks_in_flight_and_sends_nothing_new(pending, tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, 200)
    uploads, _ = uploads_of(pending, budget=Budget(max_batches=2), max_frame_bytes=1000)
    sender = uploads.track(path)
    client = connect(pending, uploads)
    assert len(sender.inflight) == 2
    stopped = uploads.stop()
    assert not stopped.called
    sent = len(client.traffic)
    pending.commits.run()
    pending.flush()
    assert stopped.result is True
    assert [way for way, _ in client.traffic[sent:]] == ["got", "got"]  # the two acks, nothing sent after
    assert 0 < pending.store.get(sender.session_id).count < 200


def test_stop_gives_up_after_its_timeout_when_the_acks_do_not_come(pending, tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, 200)
    uploads, _ = uploads_of(pending, max_frame_bytes=1000)
    uploads.track(path)
    connect(pending, uploads)
    stopped = uploads.stop()
    pending.clock.advance(STOP_TIMEOUT - 1)
    assert not stopped.called
    pending.clock.advance(1)
    assert stopped.result is False


def test_many_sessions_share_the_connection_and_each_is_stored_whole(lab, tmp_path):
    paths = []
    for number in range(5):
        path = tmp_path / f"s{number}.jsonl"
        write_lines(path, 100 + number * 37)
        paths.append(path)
    uploads, _ = uploads_of(lab, budget=Budget(max_bytes=20_000, max_batches=3), max_frame_bytes=1500)
    senders = [uploads.track(path) for path in paths]
    connect(lab, uploads)
    assert uploads.caught_up
    for path, sender in zip(paths, senders):
        assert stored(lab, sender.session_id) == path.read_bytes()
