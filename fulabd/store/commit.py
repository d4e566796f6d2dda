"""
The commit's thread side: one job per session, making what was written to
it since its last job durable (its lines, then the sidecars that changed),
and the threads those jobs run on.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass

from twisted.internet import defer
from twisted.python.failure import Failure

from fulabd import edn
from fulabd.store.layout import Root
from fulabd.store.session import Session

# Enough threads for every live session's sync to be in progress at once: a session's sync that queued behind
# others' would add their time to its ack, and concurrent fsyncs cost the disk about one journal commit.
SYNC_THREADS = 64
PAR_KEYWORD_VALUES = frozenset({"tags", "participants"})


@dataclass
class CommitJob:
    """What one session needs made durable, encoded in the thread (not the reactor).

    `pars` is the session's PAR list, of which the first `par_count` are
    written (the list only grows meanwhile, so it is not copied); `meta` is a
    copy of the metadata, with the counts that are durable once the job is done.
    """

    root: Root
    session: Session
    fd: int | None
    pars: list | None
    meta: dict | None
    lines: int
    size: int
    published_lines: list
    published_pars: list
    waiters: list
    par_count: int = 0
    par_bytes: int | None = None
    fsync_seconds: float = 0.0
    failed: Exception | None = None  # failed before it could run (its file could not be opened)


def run_commit_job(job: CommitJob) -> Exception | None:
    """Any exception, not only OSError, is the job's error: a commit must never leave its waiters hanging."""
    if job.failed is not None:
        return job.failed
    try:
        if job.fd is not None:
            started = time.perf_counter()
            os.fdatasync(job.fd)
            job.fsync_seconds = time.perf_counter() - started
        if job.pars is not None:
            data = edn.dumps(job.pars[:job.par_count], PAR_KEYWORD_VALUES)
            job.root.write_atomically(job.session.par_name, data)
            job.par_bytes = len(data)
            if job.meta is not None:
                job.meta["par-bytes"] = job.par_bytes
        if job.meta is not None:
            job.root.write_atomically(job.session.meta_name, edn.dumps(job.meta))
    except Exception as e:
        return e
    return None


CROWDED_SYNCS = 8  # syncs in flight beyond which a sync thread stops interrupting the reactor


def set_yielding(yielding: bool) -> None:
    """Make the calling thread, when its `fdatasync` returns, wait for the reactor's turn to end instead of
    interrupting it (Linux's `SCHED_BATCH`), or not; elsewhere nothing changes.

    With 50 live sessions syncing (scenario 2 of the benchmark), their threads' wakeups switched the reactor
    out 57,000 times in 10 s, 4,400 times yielding; in three pairs of runs one right after the other, ack p50
    33-41 against 22-23 ms, p99 77-104 against 63-81 ms.  But a lone session's sync is what its upload waits
    for: yielding always, a bulk upload's syncs waited for a busy reactor's turns (107 against 139 MB/s), so
    a thread yields only while more than CROWDED_SYNCS syncs are in flight (161 against 160 MB/s)."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH if yielding else os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


class SyncThreads:
    """The threads the sync jobs run on, lighter than Twisted's `ThreadPool` (which costs about twice the
    CPU of a `fdatasync` itself per job, in context switches and bookkeeping): a job is a queue entry, and
    the results that come back while the reactor is busy are handed over in one `callFromThread`.  Threads
    are started as jobs outnumber them, up to `most`, and live until `stop`."""

    def __init__(self, reactor, most: int = SYNC_THREADS):
        self._reactor = reactor
        self._most = most
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._outstanding = 0  # jobs whose result the reactor has not yet had (reactor thread only)
        self._results: list[tuple[defer.Deferred, object, Failure | None]] = []
        self._results_lock = threading.Lock()

    def run(self, function, *args) -> defer.Deferred:
        """`function(*args)` in a sync thread; the Deferred fires with its result in the reactor thread."""
        if self._outstanding + 1 > len(self._threads) < self._most:
            thread = threading.Thread(target=self._work, name=f"fulabd-sync-{len(self._threads)}", daemon=True)
            try:
                thread.start()
            except RuntimeError as e:  # no thread to be had: the job waits for the others, if there are any
                if not self._threads:
                    return defer.fail(e)
            else:
                self._threads.append(thread)
        done = defer.Deferred()
        self._outstanding += 1
        self._jobs.put((done, function, args))
        return done

    def stop(self):
        """Let the threads finish the jobs given them, then end (the store's syncs are all settled by then)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _work(self):
        yielding = False
        while (job := self._jobs.get()) is not None:
            done, function, args = job
            if (self._outstanding > CROWDED_SYNCS) != yielding:  # (the reactor's count, read unlocked: a hint)
                yielding = not yielding
                set_yielding(yielding)
            try:
                outcome = (done, function(*args), None)
            except BaseException:
                outcome = (done, None, Failure())
            with self._results_lock:
                first = not self._results
                self._results.append(outcome)
            if first:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self):
        with self._results_lock:
            results, self._results = self._results, []
        self._outstanding -= len(results)
        for done, result, failure in results:
            if failure is None:
                done.callback(result)
            else:
                done.errback(failure)
