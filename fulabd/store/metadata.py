"""
The `.meta.edn` sidecar, the reactor side: what changed in a session's
metadata is written with the next commit when it was never written, else by
the housekeeping within a second (off the ack path), in a thread. Part of
`SessionStore` (a mixin over its state).
"""

from __future__ import annotations

from fulabd import edn
from fulabd.messages import now_iso
from fulabd.store.session import Session

META_INTERVAL = 1.0
IDLE_CLOSE_SECONDS = 60.0


class SessionMetadata:
    """Metadata kept in memory and written at most once a second per session; idle files closed."""

    def _update_meta(self, session: Session, meta: dict, init_count: int):
        now = now_iso(self.clock.seconds())
        session.meta.setdefault("created-at", now)
        session.meta.update(meta)
        session.meta["session-id"] = session.session_id
        session.meta["init/complete"] = True
        session.meta["init/event-count"] = init_count
        session.meta_due = True
        self._meta_changed(session)

    def update_meta(self, session_id: str, **values) -> None:
        """Record extra metadata (e.g. the uploader's name) of a stored session with the next commit."""
        session = self.get(session_id)
        if session is None:
            return
        changed = {key: value for key, value in values.items() if session.meta.get(key) != value}
        if changed:
            session.meta.update(changed)
            session.meta_due = True
            self._meta_changed(session)

    def _meta_changed(self, session: Session):
        """The metadata must be rewritten: with the next commit if it was never written, else within a second."""
        if not session.meta_dirty:
            session.meta.setdefault("session-id", session.session_id)
            session.meta.setdefault("created-at", now_iso(self.clock.seconds()))
            for key, value in (("event-count", session.count), ("jsonl-bytes", session.size),
                               ("par-count", session.par_count)):
                session.meta.setdefault(key, value)
            if session.meta_written_at == float("-inf") and not self._root.exists(session.meta_name):
                session.meta_due = True
            session.meta_dirty = True
        if session.meta_due:
            self._dirty.add(session)


    def _meta_taken(self, session: Session, now: float, durable_after: bool = False) -> dict:
        """The metadata to write now (a copy); the session's meta is clean until it changes again.

        `durable_after`: written by a commit job after its lines are synced, so it can record them.
        """
        session.meta["updated-at"] = now_iso(now)
        session.meta_dirty = session.meta_due = False
        session.meta_written_at = now
        session.meta_writing = True
        meta = dict(session.meta)
        if durable_after:
            meta["event-count"], meta["jsonl-bytes"] = session.written, session.written_size
            if session.write_pars:
                meta["par-count"] = session.par_count
        return meta

    def _tidy(self):
        """Refresh metadata that changed (at most once a second each, off the ack path); close idle files."""
        try:
            self._tidy_now()
        except Exception:
            self._log.failure("store housekeeping failed; trying again in {interval} s", interval=META_INTERVAL)

    def _tidy_now(self):
        now = self.clock.seconds()
        due = [session for session in self._sessions.values()
               if session.meta_dirty and not session.meta_writing and now - session.meta_written_at >= META_INTERVAL]
        self._files.close_idle(IDLE_CLOSE_SECONDS, lambda session: session in self._dirty or session.uploaders > 0)
        if due:
            files = [(session.meta_name, self._meta_encoded(session, now)) for session in due]
            self._meta_writes = self._run_in_thread(self._root.write_all_atomically, files).addBoth(
                self._metas_written, due)

    def _meta_encoded(self, session: Session, now: float) -> bytes:
        return edn.dumps(self._meta_taken(session, now))

    def _metas_written(self, errors, sessions: list[Session]):
        if not isinstance(errors, list):
            self._log.failure("writing metadata failed; will retry", errors)
            errors = [errors.value] * len(sessions)
        for session, error in zip(sessions, errors):
            session.meta_writing = False
            if error is not None:
                session.meta_dirty = True
                self._log.error("session {safe_id}: could not write {path}: {error}; will retry",
                                safe_id=session.safe_id, path=session.meta_path, error=error)
        self._kick()
