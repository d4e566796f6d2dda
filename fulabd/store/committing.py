"""
Per-session syncs, the reactor side: as soon as a session has writes and no
sync of its own in flight, one thread job makes them durable; once it is back,
that session's acks fire and viewers are told, or, on any failure, its waiters
get `storage-failed` and the file goes back to its durable size.  The jobs of
all sessions run side by side (the file system folds concurrent fsyncs into one
journal commit), so a line waits only for its session's sync in flight and its
own, never for other sessions'.  While many are in flight, a session's next sync
gathers its writes for GATHER_SECONDS first (see there).  Part of `SessionStore`
(a mixin over its state).
"""

from __future__ import annotations

from twisted.internet import defer

from fulabd.messages import STORAGE_FAILED
from fulabd.store.commit import CROWDED_SYNCS, CommitJob, run_commit_job
from fulabd.store.interface import StoreError
from fulabd.store.session import Session


# While more than CROWDED_SYNCS syncs are in flight, a session's sync starts at most this long after its first
# write not yet being synced, so that the lines arriving meanwhile share it.  An fdatasync costs 33 to 56 us of
# CPU on the benchmark's VM, on the core the reactor needs: under scenario 2's load (50 sessions, 10,000
# messages a second) 5 ms made 28 % fewer syncs, and in seven pairs of runs one right after the other the ack
# p99 was 78.5 to 124 ms against 95 to 179 ms (better in five), the p50 the same (gathering from 8 in flight
# there).  A lone upload never waits.
GATHER_SECONDS = 0.005


class SessionSyncs:
    """Durability of everything the store was asked to do, one sync in flight per session."""

    def _durable(self, session: Session) -> defer.Deferred:
        """Fires once everything done to `session` so far is on disk."""
        in_flight = self._syncing.get(session)
        if session not in self._dirty and not session.waiters:
            if in_flight is None:
                return defer.succeed(None)
            waiter = defer.Deferred()
            in_flight[0].waiters.append(waiter)  # nothing was done since that sync started
            return waiter
        waiter = defer.Deferred()
        session.waiters.append(waiter)
        self._dirty.add(session)
        self._kick()
        return waiter

    def flush(self) -> defer.Deferred:
        """Fires once every change made so far is on disk."""
        waiters = [self._durable(session) for session in self._dirty | set(self._syncing)]
        return defer.DeferredList(waiters, consumeErrors=True)

    def _kick(self):
        """Start a sync for every session that has something to make durable and no sync in flight (while many
        are in flight, once it has gathered its writes for GATHER_SECONDS)."""
        now = self.clock.seconds()
        crowded = len(self._syncing) > CROWDED_SYNCS
        gathering = False
        for session in list(self._dirty):
            if session in self._syncing:  # (a job that settled at once may have started another meanwhile)
                continue
            if crowded and now - self._gathering.setdefault(session, now) < GATHER_SECONDS:
                gathering = True
                continue
            self._gathering.pop(session, None)
            meta_due = session.meta_due and not session.meta_writing
            if not (session.sync_lines or session.write_pars or meta_due or session.waiters):
                continue
            self._dirty.discard(session)
            fd, failed = None, None
            if session.sync_lines:
                try:
                    fd = self._files.pin(session)  # pinned from here to its sync: never closed unsynced
                except StoreError as e:
                    failed = e
            job = CommitJob(
                root=self._root, session=session, fd=fd, failed=failed,
                pars=session.pars if session.write_pars else None, par_count=session.par_count,
                meta=self._meta_taken(session, now, durable_after=True) if meta_due else None,
                lines=session.written, size=session.written_size,
                published_lines=session.pending_lines, published_pars=session.pending_pars,
                waiters=session.waiters)
            session.pending_lines, session.pending_pars, session.waiters = [], [], []
            session.sync_lines = session.write_pars = False
            self._syncing[session] = (job, now)
            self._run_sync(run_commit_job, job).addCallbacks(
                self._synced, self._sync_crashed, callbackArgs=(job,), errbackArgs=(job,))
        if gathering and self._gathered is None:
            self._gathered = self.clock.callLater(GATHER_SECONDS, self._gathering_done)

    def _gathering_done(self):
        self._gathered = None
        self._kick()

    def _sync_crashed(self, failure, job: CommitJob):
        """The thread itself failed (not the job's own work): the job failed with it."""
        self._log.failure("session {safe_id}: a sync job failed as a whole", failure, safe_id=job.session.safe_id)
        self._synced(failure.value, job)

    def _synced(self, error: Exception | None, job: CommitJob):
        del self._syncing[job.session]  # first: a waiter's callback may ask for the session's next sync
        try:
            self._settle(job, error)
        except Exception:
            self._log.failure("session {safe_id}: settling a sync failed", safe_id=job.session.safe_id)
            self._fail_waiters(job, RuntimeError("the sync could not be settled"))
        finally:
            self._kick()

    def _settle(self, job: CommitJob, error: Exception | None):
        session = job.session
        if job.fd is not None:
            self._files.unpin(session)
        if job.meta is not None:
            session.meta_writing = False
        if error is not None:
            self._log.error("session {safe_id}: could not make writes durable: {error}",
                            safe_id=session.safe_id, error=error)
            self._rollback(session, job)
            self._fail_waiters(job, error)
            return
        if job.fd is not None and self.observe_fsync is not None:
            self.observe_fsync(job.fsync_seconds)
        first = session.count
        session.count, session.size = job.lines, job.size
        recorded = {"event-count": session.count, "jsonl-bytes": session.size}
        if job.pars is not None:
            recorded |= {"par-count": job.par_count, "par-bytes": job.par_bytes}
        if any(session.meta.get(key) != value for key, value in recorded.items()):
            session.meta.update(recorded)
            self._meta_changed(session)
        self.index.touch(session)
        self._publish(session, first, job)
        for waiter in job.waiters:
            waiter.callback(None)

    def _fail_waiters(self, job: CommitJob, error: Exception):
        session = job.session
        failure = StoreError(STORAGE_FAILED, f"the server could not store the lines durably "
                                             f"({error}); nothing was acknowledged, resume and resend")
        waiters, session.waiters = job.waiters + session.waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def _publish(self, session: Session, first: int, job: CommitJob):
        if self.hub is None:
            return
        if job.published_lines:
            self.hub.lines_appended(session, first, job.published_lines)
        for index, par in job.published_pars:
            self.hub.par_added(session, index, par)

    def _rollback(self, session: Session, job: CommitJob):
        """Forget every write that is not durable: the file goes back to its durable size."""
        if session.written_size != session.size:
            try:
                fd = self._files.get(session)
            except StoreError as e:
                self._fence(session, f"a commit failed, and the file could not be reopened to cut it back "
                                     f"({e.extra['reason']})")
            else:
                self._cut_back(session, fd, session.size, "a commit failed")
            self._files.close(session)
        session.written, session.written_size = session.count, session.size
        session.ends = None
        session.pending_lines = []
        session.sync_lines = False
        if job.pars is not None or session.write_pars:
            session.pars = None
            session.pending_pars = []
            session.write_pars = False
            self.pars(session)
