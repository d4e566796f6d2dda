"""
The group commit, the reactor side: the sessions written since the last
commit go to one thread job; once it is back, acks fire and viewers are told,
or, on any failure, the waiters get `storage-failed` and the file goes back to
its durable size. Part of `SessionStore` (a mixin over its state).
"""

from __future__ import annotations

from twisted.internet import defer

from fulabd.messages import STORAGE_FAILED
from fulabd.store.commit import CommitJob, run_commit_jobs
from fulabd.store.interface import StoreError
from fulabd.store.session import Session


class GroupCommit:
    """Durability of everything the store was asked to do, one commit at a time."""

    def _durable(self, session: Session) -> defer.Deferred:
        """Fires once everything done to `session` so far is on disk."""
        if session not in self._dirty and not session.waiters and self._committing_since is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        session.waiters.append(waiter)
        self._dirty.add(session)
        self._kick()
        return waiter

    def _kick(self):
        if self._committing_since is None and self._dirty:
            self._commit()

    def flush(self) -> defer.Deferred:
        """Fires once every change made so far is on disk."""
        waiters = [self._durable(session) for session in list(self._dirty)]
        return defer.DeferredList(waiters, consumeErrors=True)

    def _commit(self):
        now = self.clock.seconds()
        batch = []
        for session in list(self._dirty):
            meta_due = session.meta_due and not session.meta_writing
            if not (session.sync_lines or session.write_pars or meta_due or session.waiters):
                continue
            self._dirty.discard(session)
            fd, failed = None, None
            if session.sync_lines:
                try:
                    fd = self._files.pin(session)
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
            batch.append(job)
        if not batch:
            return
        self._committing_since = now
        self._run_in_thread(run_commit_jobs, batch, self._syncers).addCallbacks(
            self._committed, self._commit_crashed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _commit_crashed(self, failure, batch: list):
        """The thread itself failed (not one job): every job of the batch failed with it."""
        self._log.failure("a group commit failed as a whole", failure)
        self._committed([failure.value] * len(batch), batch)

    def _committed(self, errors: list, batch: list):
        try:
            for job, error in zip(batch, errors):
                try:
                    self._settle(job, error)
                except Exception:
                    self._log.failure("session {safe_id}: settling a commit failed", safe_id=job.session.safe_id)
                    self._fail_waiters(job, RuntimeError("the commit could not be settled"))
        finally:
            self._committing_since = None
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
