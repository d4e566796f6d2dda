"""
A disk that fails: an injected error from `write`, `fdatasync` or a sidecar's
`fsync` (the one fault that cannot be made real here) in a real store on real
files, served by the real upload endpoint in this process and driven by an
independent `websockets` client.  The client must get `storage-failed` (or
`storage-full`) and no ack, and after the fault clears, resume and resend
must complete the upload with nothing lost and nothing doubled.
"""

import errno
import os

import orjson
import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, threads
from websockets.sync.client import connect

from fulabd.hub import Hub
from fulabd.store import SessionStore
from tests.fixtures import in_process_site, real_sample_files, sample_lines

SAMPLE = max(real_sample_files(), key=lambda path: path.stat().st_size)


class Fault:
    """Make `os.<name>` fail with `error` on files whose name ends with `suffix`, `times` times.

    With `short_write`, a failing write first stores half its bytes, as a
    disk filling up mid-write does.
    """

    def __init__(self, monkeypatch, name: str, suffix: str, error: int = errno.EIO, short_write: bool = False):
        self.real = getattr(os, name)
        self.suffix = suffix
        self.error = error
        self.short_write = short_write
        self.times = 0
        self.failed = 0
        monkeypatch.setattr(os, name, self)

    def __call__(self, fd, *args):
        if self.times and os.readlink(f"/proc/self/fd/{fd}").endswith(self.suffix):
            if self.short_write:
                self.short_write = False
                return self.real(fd, args[0][:len(args[0]) // 2])
            self.times -= 1
            self.failed += 1
            raise OSError(self.error, os.strerror(self.error))
        return self.real(fd, *args)


class Published:
    """A hub listener: what viewers would have been sent."""

    def __init__(self):
        self.lines: list[bytes] = []

    def lines_appended(self, session, first, lines):
        assert first == len(self.lines), "published out of order or twice"
        self.lines.extend(lines)

    def par_added(self, session, index, par):
        pass


@pytest.fixture
def server(tmp_path):
    """The real store and upload endpoint in this process, on a loopback port."""
    from twisted.internet import reactor

    hub = Hub()
    published = Published()
    hub.listeners.append(published)
    store = SessionStore(str(tmp_path / "remote"), clock=reactor, hub=hub)
    store.startService()
    site = in_process_site(store)
    port = pytest_twisted.blockon(endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site))
    server = type("Server", (), {})()
    server.store, server.published = store, published
    server.url = f"ws://127.0.0.1:{port.getHost().port}/fulab/lab/upload/ws"
    server.file = tmp_path / "remote" / "s.jsonl"
    yield server
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
    pytest_twisted.blockon(defer.maybeDeferred(store.stopService))


def exchange(url: str, messages: list[dict]) -> defer.Deferred:
    """Send `messages` pipelined on one connection (in a thread); fires with the replies."""

    def run():
        with connect(url, max_size=None) as ws:
            for message in messages:
                ws.send(orjson.dumps(message).decode())
            return [orjson.loads(ws.recv(timeout=30)) for _ in messages]

    return threads.deferToThread(run)


def events(seq: int, lines: list[str]) -> dict:
    return {"type": "events", "session-id": "s", "seq": seq, "events": lines}


@defer.inlineCallbacks
def resume_and_finish(server, lines: list[str]):
    """What an uploader does after an error: resume, then send the rest."""
    [resumed] = yield exchange(server.url, [{"type": "resume", "session-id": "s"}])
    count = resumed["count"]
    [done] = yield exchange(server.url, [events(count, lines[count:])])
    assert done["type"] == "ack" and done["count"] == len(lines), done
    assert server.file.read_bytes() == SAMPLE.read_bytes()
    assert server.published.lines == [line.encode() for line in lines]
    return count


@pytest.mark.parametrize("name, suffix", [("fdatasync", ".jsonl"), ("fsync", ".meta.edn.tmp")])
@pytest_twisted.inlineCallbacks
def test_failed_sync_gives_storage_failed_no_ack_and_rolls_back(server, monkeypatch, name, suffix):
    lines = sample_lines(SAMPLE)
    [first] = yield exchange(server.url, [{"type": "init", "session-id": "s", "source": "claude",
                                           "events": lines[:100]}])
    assert first["count"] == 100
    durable = server.file.read_bytes()
    fault = Fault(monkeypatch, name, suffix)
    fault.times = 1
    message = events(100, lines[100:200])
    if name == "fsync":  # a sidecar is written with these lines
        message = {"type": "init", "session-id": "s", "source": "claude", "events": lines[:200]}
    [reply] = yield exchange(server.url, [message])
    assert fault.failed == 1
    assert reply["type"] == "error" and reply["err"] == "storage-failed", reply
    assert "resume" in reply["detail"]
    assert server.file.read_bytes() == durable
    assert server.store.get("s").count == 100
    assert (yield resume_and_finish(server, lines)) == 100


@pytest.mark.parametrize("error, code", [(errno.EIO, "storage-failed"), (errno.ENOSPC, "storage-full")])
@pytest_twisted.inlineCallbacks
def test_failed_write_gives_an_error_and_stores_nothing(server, monkeypatch, error, code):
    lines = sample_lines(SAMPLE)
    yield exchange(server.url, [events(0, lines[:50])])
    durable = server.file.read_bytes()
    fault = Fault(monkeypatch, "write", ".jsonl", error, short_write=True)
    fault.times = 1
    [reply] = yield exchange(server.url, [events(50, lines[50:])])
    assert fault.failed == 1
    assert reply["type"] == "error" and reply["err"] == code, reply
    assert server.file.read_bytes() == durable
    assert (yield resume_and_finish(server, lines)) == 50


@pytest_twisted.inlineCallbacks
def test_fault_in_a_pipelined_upload_never_acks_what_is_not_stored(server, monkeypatch):
    """Many batches in flight when one commit fails: every ack stays true, and resume completes the file."""
    lines = sample_lines(SAMPLE)
    fault = Fault(monkeypatch, "fdatasync", ".jsonl")
    batches = [events(seq, lines[seq:seq + 10]) for seq in range(0, len(lines), 10)]
    fault.times = 1
    replies = yield exchange(server.url, batches)
    assert fault.failed == 1
    acked = [reply["count"] for reply in replies if reply["type"] == "ack"]
    errors = {reply["err"] for reply in replies if reply["type"] == "error"}
    assert acked == sorted(acked) and errors and errors <= {"storage-failed", "gap"}, (acked, errors)
    assert "storage-failed" in errors
    count = yield resume_and_finish(server, lines)
    assert count >= max(acked, default=0)
