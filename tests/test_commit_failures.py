"""
Commits never wedge: whatever a commit job raises, its waiters get
`storage-failed` and the store keeps taking work; a file that cannot be cut
back is fenced, never spliced; a failed directory fsync does not stop the
meta from being rewritten; `/healthz` says what is wrong. Real store, real
files; only the faults themselves are injected.
"""

import os
import stat

import edn_format
import pytest
from twisted.internet import task
from twisted.web.test.requesthelper import DummyRequest

from fulabd import web
from fulabd.messages import ProtocolError
from fulabd.store import SessionStore
from tests.test_store import ManualThread, make_store, result_of


def failing_with(error: Exception, times: int = 1):
    calls = {"left": times}
    real = os.fdatasync

    def fdatasync(fd):
        if calls["left"]:
            calls["left"] -= 1
            raise error
        real(fd)

    return fdatasync


def health(store) -> tuple[int, bytes]:
    request = DummyRequest([b""])
    body = web.Health(store.problem).render_GET(request)
    return request.responseCode or 200, body


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("odd"), MemoryError()])
def test_a_commit_job_raising_anything_fails_its_waiters_and_the_store_keeps_working(tmp_path, monkeypatch, error):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"kept"]))
    monkeypatch.setattr(os, "fdatasync", failing_with(error))
    with pytest.raises(ProtocolError) as failed:
        result_of(store.append("s", 1, [b"lost"]))
    assert failed.value.code == "storage-failed"
    assert (tmp_path / "s.jsonl").read_bytes() == b"kept\n"
    assert result_of(store.append("s", 1, [b"again"])).count == 2
    assert result_of(store.append("t", 0, [b"other"])).count == 1
    assert store.problem() is None


def test_a_commit_thread_that_fails_as_a_whole_fails_every_waiter_and_the_store_keeps_working(tmp_path, monkeypatch):
    store, _ = make_store(tmp_path)

    def broken(job):
        raise RuntimeError("the thread pool is gone")

    monkeypatch.setattr("fulabd.store.committing.run_commit_job", broken)
    with pytest.raises(ProtocolError) as failed:
        result_of(store.append("s", 0, [b"lost"]))
    assert failed.value.code == "storage-failed"
    monkeypatch.undo()
    assert result_of(store.append("s", 0, [b"stored"])).count == 1
    assert (tmp_path / "s.jsonl").read_bytes() == b"stored\n"


def test_healthz_is_503_while_a_commit_is_pending_too_long_then_200(tmp_path):
    thread = ManualThread()
    store, clock = make_store(tmp_path, thread=thread)
    acked = store.append("s", 0, [b"line"])
    clock.advance(10)
    assert health(store) == (200, b"ok\n")
    clock.advance(21)
    code, body = health(store)
    assert code == 503 and b"a commit to disk has been pending for 31 s" in body
    thread.run_all()
    assert result_of(acked).count == 1
    assert health(store) == (200, b"ok\n")


def test_a_file_that_cannot_be_cut_back_is_fenced_until_a_restart_recovers_it(tmp_path, monkeypatch):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"kept"]))
    monkeypatch.setattr(os, "fdatasync", failing_with(OSError(5, "Input/output error")))
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(30, "Read-only")))
    with pytest.raises(ProtocolError):
        result_of(store.append("s", 1, [b"unsynced"]))
    monkeypatch.undo()
    with pytest.raises(ProtocolError) as fenced:
        result_of(store.append("s", 2, [b"spliced?"]))
    assert fenced.value.code == "storage-failed" and "restarted" in fenced.value.detail
    assert result_of(store.append("t", 0, [b"others still work"])).count == 1
    code, body = health(store)
    assert code == 503 and b"1 session(s) cannot be written until a restart (s)" in body
    assert (tmp_path / "s.jsonl").read_bytes() == b"kept\nunsynced\n"
    result_of(store.stopService())
    restarted, _ = make_store(tmp_path)
    assert result_of(restarted.resume("s")) == 2
    assert result_of(restarted.append("s", 2, [b"after"])).count == 3
    assert health(restarted) == (200, b"ok\n")


def test_a_failed_directory_fsync_does_not_stop_later_meta_rewrites(tmp_path, monkeypatch):
    store, clock = make_store(tmp_path)
    result_of(store.append("s", 0, [b"a"], {"source": "codex"}))
    real = os.fsync
    failures = {"left": 1}

    def fsync(fd):
        if failures["left"] and stat.S_ISDIR(os.fstat(fd).st_mode):
            failures["left"] -= 1
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.update_meta("s", uploader="alice")
    clock.advance(1.0)
    assert failures["left"] == 0
    clock.advance(1.0)
    store.update_meta("s", uploader="bob")
    clock.advance(1.0)
    clock.advance(1.0)
    meta = edn_format.loads((tmp_path / "s.meta.edn").read_text())
    assert meta[edn_format.Keyword("uploader")] == "bob"


def test_healthz_is_503_when_the_root_is_not_writable(tmp_path, monkeypatch):
    store, _ = make_store(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    code, body = health(store)
    assert code == 503 and b"is not writable" in body


def test_a_store_that_is_not_running_is_unhealthy(tmp_path):
    store = SessionStore(str(tmp_path))
    assert "not open" in store.problem()


def test_while_the_store_loads_healthz_says_so_and_uploads_wait_for_the_load(tmp_path):
    (tmp_path / "s.jsonl").write_bytes(b"a\nb\n")
    thread = ManualThread()
    clock = task.Clock()
    store = SessionStore(str(tmp_path), clock=clock, run_in_thread=thread)
    store.startService()
    code, body = health(store)
    assert code == 503 and b"loading the store" in body
    resumed = store.resume("s")
    appended = store.append("s", 2, [b"c"])
    assert store.sessions() == [] and not resumed.called and not appended.called
    thread.run_all()  # the load, then the commit it let through
    thread.run_all()
    assert result_of(resumed) == 2 and result_of(appended).count == 3
    assert health(store) == (200, b"ok\n")
    assert (tmp_path / "s.jsonl").read_bytes() == b"a\nb\nc\n"
