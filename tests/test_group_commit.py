"""
Sessions' syncs run side by side on the store's own threads, so that the
file system can fold them into one journal commit (with 50 live sessions,
syncing them one after another cost 100-600 ms here), and so that no
session's sync queues behind the others'.
"""

import os
import queue
import threading

import pytest
from twisted.internet import task

from fulabd.store import SessionStore
from fulabd.store.commit import CROWDED_SYNCS, SyncThreads
from fulabd.store.committing import GATHER_SECONDS
from tests.test_store import ManualThread, make_store, result_of


def test_every_sessions_sync_is_in_progress_at_the_same_time(tmp_path, monkeypatch):
    sessions = 50
    # Each sync waits until all of them are in progress: queued behind one another, the first would time out.
    together = threading.Barrier(sessions, timeout=20)
    synced = []
    all_synced = threading.Event()
    real = os.fdatasync

    def fdatasync(fd):
        together.wait()
        real(fd)
        synced.append(fd)
        if len(synced) == sessions:
            all_synced.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store = SessionStore(str(tmp_path), clock=task.Clock())
    store.load()
    try:
        for number in range(sessions):
            store.append(f"s{number}", 0, [b"line"])
        store.clock.advance(GATHER_SECONDS)  # past CROWDED_SYNCS in flight, the others gather their writes first
        assert all_synced.wait(30), f"only {len(synced)} of {sessions} syncs got past the barrier"
    finally:
        store.stop_syncs()


class ThreadReactor:
    """What `SyncThreads` needs of a reactor: `callFromThread`, whose calls the test runs in its own thread."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, function, *args):
        self.calls.put((function, args))

    def run_next(self):
        function, args = self.calls.get(timeout=30)
        function(*args)


def test_sync_threads_deliver_results_and_errors_in_the_reactor_thread_together(tmp_path):
    reactor, release = ThreadReactor(), threading.Event()
    threads = SyncThreads(reactor, most=2)
    in_reactor = threading.get_ident()

    def job(value):
        release.wait(30)
        if value == "fails":
            raise OSError(5, "Input/output error")
        return value, threading.get_ident()

    results, errors = [], []
    for value in ("a", "b", "fails"):
        threads.run(job, value).addCallbacks(results.append, errors.append)
    assert len(threads._threads) == 2  # as many as the jobs in progress, up to `most`
    release.set()
    while len(results) + len(errors) < 3:
        reactor.run_next()
    assert sorted(value for value, _ in results) == ["a", "b"]
    assert all(thread != in_reactor for _, thread in results)
    assert [error.value.strerror for error in errors] == ["Input/output error"]
    threads.stop()
    assert not threads._threads


def test_a_sync_that_gets_no_thread_fails_instead_of_waiting_for_ever(monkeypatch):
    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    failed = []
    SyncThreads(ThreadReactor()).run(os.fdatasync, 0).addErrback(failed.append)
    assert [failure.getErrorMessage() for failure in failed] == ["can't start new thread"]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_sync_threads_stop_interrupting_the_reactor_only_when_many_syncs_are_in_flight():
    """A job sees its thread's policy: a lone sync (a bulk upload waits on it) keeps the ordinary one; one
    of more than CROWDED_SYNCS in flight (many live sessions) is SCHED_BATCH; then ordinary again."""
    reactor, release = ThreadReactor(), threading.Event()
    threads = SyncThreads(reactor, most=CROWDED_SYNCS + 2)

    def policy(wait: bool):
        if wait:
            release.wait(30)
        return os.sched_getscheduler(0)

    def run(jobs: int, wait: bool) -> list[int]:
        seen = []
        for _ in range(jobs):
            threads.run(policy, wait).addCallback(seen.append)
        if wait:
            release.set()
        while len(seen) < jobs:
            reactor.run_next()
        release.clear()
        return seen

    try:
        assert run(1, wait=False) == [os.SCHED_OTHER]
        assert os.SCHED_BATCH in run(CROWDED_SYNCS + 2, wait=True)
        assert run(1, wait=False) == [os.SCHED_OTHER]
    finally:
        threads.stop()


def test_while_many_syncs_are_in_flight_a_session_gathers_its_writes_before_its_own(tmp_path):
    """Fewer syncs, each costing CPU on the reactor's core: a line then waits at most GATHER_SECONDS more."""
    thread = ManualThread()
    store, clock = make_store(tmp_path, thread=thread)
    acked = []
    for number in range(CROWDED_SYNCS + 1):  # in flight, held by the test
        store.append(f"busy{number}", 0, [b"line"]).addCallback(acked.append)
    assert len(thread.jobs) == CROWDED_SYNCS + 1
    first = store.append("late", 0, [b"a"])
    clock.advance(GATHER_SECONDS / 2)
    second = store.append("late", 1, [b"b"])
    assert len(thread.jobs) == CROWDED_SYNCS + 1, "the late session's sync waits, gathering"
    clock.advance(GATHER_SECONDS / 2)
    assert len(thread.jobs) == CROWDED_SYNCS + 2, "then one sync takes both of its writes"
    thread.run_all()
    assert result_of(first).count == result_of(second).count == 2 and len(acked) == CROWDED_SYNCS + 1
    lone = store.append("lone", 0, [b"x"])
    assert len(thread.jobs) == 1, "with few in flight, a sync starts at once"
    thread.run_all()
    assert result_of(lone).count == 1
