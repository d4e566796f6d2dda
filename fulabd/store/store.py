"""
The session store: `<root>/<safe-id>.jsonl` plus `.meta.edn` and `.par.edn` sidecars.

Lines are written in the reactor thread as they arrive (so one session's
writes are serialized whatever connection they come from) and made durable by
per-session sync jobs: as soon as a session has writes and no sync of its own
in flight, a thread job fdatasyncs it and writes its PAR and meta sidecars
that changed, and only then are that session's waiting acks fired and its new
lines published to viewers.  The jobs of all sessions run side by side (the
file system folds concurrent fsyncs into one journal commit), and a line waits
only for its session's sync in flight and its own, never for other sessions'.

The store knows nothing of WebSockets: callers get a Deferred that fires once
what they asked for is on disk, or fails with a `ProtocolError`.
"""

from __future__ import annotations

import errno
import os

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from fulabd.messages import CONFLICT, GAP, STORAGE_FAILED, STORAGE_FULL, ProtocolError
from fulabd.store.commit import CommitJob, SyncThreads
from fulabd.store.committing import SessionSyncs
from fulabd.store.files import DEFAULT_MAX_OPEN_FILES, OpenFiles
from fulabd.store.index import ChangeIndex
from fulabd.store.interface import StoreError
from fulabd.store.layout import Root, safe_id
from fulabd.store.metadata import META_INTERVAL, SessionMetadata
from fulabd.store.pars import SessionPars
from fulabd.store.reading import SessionReading
from fulabd.store.recovery import Loaded, load_root
from fulabd.store.session import AppendResult, Session

COMMIT_STUCK_SECONDS = 30.0
MiB = 1 << 20


class SessionStore(SessionSyncs, SessionMetadata, SessionPars, SessionReading, service.Service):
    """Durable, deduplicating storage of session lines and PARs under one root folder (see `interface.Store`)."""

    _log = Logger()

    def __init__(self, root: str, clock=None, hub=None, run_in_thread=None, min_free_bytes: int = 0,
                 observe_fsync=None, max_open_files: int = DEFAULT_MAX_OPEN_FILES):
        """`observe_fsync(seconds)` is told how long each fdatasync took (for metrics).

        `run_in_thread(function, *args)` runs the store's thread jobs (the start-up load, meta rewrites and,
        when given, the syncs too); by default the syncs run on threads of their own (`SyncThreads`).
        """
        from twisted.internet import reactor

        self._root = Root(root)
        self.root = self._root.path
        self.clock = clock or reactor
        self.hub = hub
        self.min_free_bytes = min_free_bytes
        self.observe_fsync = observe_fsync
        self._run_in_thread = run_in_thread or threads.deferToThread
        self._sync_threads = None if run_in_thread else SyncThreads(reactor)
        self._run_sync = run_in_thread or self._sync_threads.run
        self._files = OpenFiles(self._root, self.clock, max_open_files)
        self._sessions: dict[str, Session] = {}
        self.index = ChangeIndex()
        self._loading: Loaded | None = None
        self._load_waiters: list[defer.Deferred] | None = None
        self._broken: str | None = None
        self._dirty: set[Session] = set()
        self._syncing: dict[Session, tuple[CommitJob, float]] = {}  # the sync in flight and when it started
        self._gathering: dict[Session, float] = {}  # dirty sessions with no sync in flight, since when
        self._gathered = None  # the call that ends the current gathering (`SessionSyncs._kick`)
        self._fenced: set[Session] = set()
        self._housekeeping = None
        self._meta_writes = defer.succeed(None)
        self._free_checked_at = float("-inf")
        self._free_bytes = None

    # -- service ---------------------------------------------------------

    def startService(self):
        """Open the root and load it in a thread: the daemon listens (and answers /healthz) meanwhile, and
        what is asked of the store waits until the load is done."""
        super().startService()
        self._root.open_folder()
        self._loading = Loaded()
        self._load_waiters = []
        self._run_in_thread(load_root, self._root, self.clock.seconds(), self._loading).addBoth(self._loaded)

    def _loaded(self, result):
        waiters, self._load_waiters = self._load_waiters, None
        self._loading = None
        if isinstance(result, defer.Failure):
            # Writing now could append to files whose counts are unknown: take no work until a restart.
            self._broken = f"the store could not be loaded ({result.getErrorMessage()}); fix it and restart"
            self._log.failure("could not load the store at {root}", result, root=self.root)
            for waiter in waiters:
                waiter.callback(None)
            return
        self._adopt(result)
        for waiter in waiters:
            waiter.callback(None)
        self._housekeeping = task.LoopingCall(self._tidy)
        self._housekeeping.clock = self.clock
        self._housekeeping.start(META_INTERVAL, now=False).addErrback(
            lambda f: self._log.failure("store housekeeping stopped", f))

    def loaded(self) -> defer.Deferred:
        return self._when_loaded(defer.succeed, None)

    def _when_loaded(self, call, *args, **kwargs) -> defer.Deferred:
        """`call(*args)` now, or once the start-up load is done."""
        if self._broken:
            return defer.fail(StoreError(STORAGE_FAILED, self._broken))
        if self._load_waiters is None:
            return call(*args, **kwargs)
        waiter = defer.Deferred()
        self._load_waiters.append(waiter)
        return waiter.addCallback(lambda _: self._when_loaded(call, *args, **kwargs))

    @defer.inlineCallbacks
    def stopService(self):
        if self._load_waiters is not None:
            waiter = defer.Deferred()
            self._load_waiters.append(waiter)
            yield waiter
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        yield self._meta_writes
        for session in self._sessions.values():
            if session.meta_dirty:
                session.meta_due = True
                self._dirty.add(session)
        yield self.flush()
        self._files.close_all()
        self.stop_syncs()
        self._root.close_folder()
        yield super().stopService()

    def stop_syncs(self):
        """Wait for the syncs in progress and stop their threads (done by `stopService`)."""
        if self._sync_threads is not None:
            self._sync_threads.stop()

    def load(self):
        """Read what is on disk: cut torn tails, count lines where the meta does not say, read sidecars."""
        if self._root.fd is None:
            self._root.open_folder()
        self._adopt(load_root(self._root, self.clock.seconds()))

    def _adopt(self, loaded: Loaded) -> None:
        """Take the sessions read in a thread, and log what the reading noted."""
        self._log_notes(loaded)
        for session in sorted(loaded.sessions, key=lambda session: session.modified):
            self._sessions[session.safe_id] = session
            self.index.touch(session)
        self._log.info("store at {root} holds {sessions} sessions", root=self.root, sessions=len(self._sessions))

    def _log_notes(self, loaded: Loaded) -> None:
        for level, text, fields in loaded.notes:
            self._note(level, text, **fields)

    def _note(self, level: str, text: str, **fields):
        getattr(self._log, level)(text, **fields)

    # -- lookups ---------------------------------------------------------

    def sessions(self) -> list[Session]:
        """Every session that has files on disk."""
        return [session for session in self._sessions.values() if session.stored]

    def get(self, session_id: str) -> Session | None:
        """The session with this raw id, if it has been stored."""
        return self._sessions.get(safe_id(session_id))

    def by_safe_id(self, safe: str) -> Session | None:
        return self._sessions.get(safe)

    def _session(self, session_id: str) -> Session:
        """The session with this raw id; a new one is kept only once something of it is written."""
        safe = safe_id(session_id)
        session = self._sessions.get(safe)
        if session is None:
            return Session(self.root, session_id, safe)
        if "session-id" not in session.meta:
            session.session_id = session_id
        elif session.meta["session-id"] != session_id:
            raise ProtocolError(CONFLICT, f"session id {session_id!r} maps to the files of another session "
                                          f"({session.session_id!r}); choose another id")
        return session

    def _keep(self, session: Session) -> None:
        if session.safe_id not in self._sessions:
            self._sessions[session.safe_id] = session
            self.index.touch(session)

    def attach(self, session_id: str) -> None:
        session = self.get(session_id)
        if session is not None:
            session.uploaders += 1
            self.index.touch(session)

    def detach(self, session_id: str) -> None:
        session = self.get(session_id)
        if session is not None and session.uploaders > 0:
            session.uploaders -= 1
            self.index.touch(session)

    def resume(self, session_id: str) -> defer.Deferred:
        """The durable line count, once everything written so far is durable."""
        return self._when_loaded(self._resume, session_id)

    def _resume(self, session_id: str) -> defer.Deferred:
        session = self.get(session_id)
        if session is None:
            return defer.succeed(0)
        return self._durable(session).addCallback(lambda _: session.count)

    # -- appending lines -------------------------------------------------

    def append(self, session_id: str, seq: int | None, lines: list[bytes], meta: dict | None = None) -> defer.Deferred:
        """Store `lines` as lines `seq`, `seq+1`, ... of the session.

        Lines already stored are checked and skipped; lines past the end are a
        `gap`.  Fires with an `AppendResult` once the lines are durable.
        """
        return self._when_loaded(self._append, session_id, seq, lines, meta)

    def _append(self, session_id: str, seq: int | None, lines: list[bytes], meta: dict | None) -> defer.Deferred:
        try:
            session = self._session(session_id)
            result = self._append_now(session, seq, lines, meta)
        except ProtocolError as e:
            return defer.fail(e)
        return self._durable(session).addCallback(
            lambda _: AppendResult(count=session.count, appended=result, dedup=result == 0))

    def _append_now(self, session: Session, seq: int | None, lines: list[bytes], meta: dict | None) -> int:
        if session.fenced:
            raise StoreError(STORAGE_FAILED, f"the server cannot write to this session until it is restarted: "
                                             f"{session.fenced}; ask the operator to check the disk and restart")
        if seq is None:
            seq = session.written
        if seq > session.written:
            raise ProtocolError(GAP, f"lines from {seq} were sent but the server has {session.written}; "
                                     f"resend from line {session.written}", expected=session.written)
        overlap = min(session.written - seq, len(lines))
        if overlap:
            differs = self._first_difference(session, seq, lines[:overlap])
            if differs is not None:
                raise ProtocolError(CONFLICT, f"line {differs} differs from the stored line {differs}; "
                                              "the session file was rewritten: upload it as a new session",
                                    line=differs, count=session.written)
        new = lines[overlap:]
        if new:
            self._check_space(sum(len(line) + 1 for line in new))
            self._write(session, new)
        elif not session.stored and meta is not None:  # an init with no lines yet: the files are made now
            self._files.get(session)
            self._keep(session)
            session.modified = self.clock.seconds()
        if meta is not None:
            self._update_meta(session, meta, init_count=len(lines))
        return len(new)

    def _first_difference(self, session: Session, seq: int, lines: list[bytes]) -> int | None:
        if self._read_span(session, seq, seq + len(lines)) == b"\n".join(lines) + b"\n":
            return None
        stored = self.read_written(session, seq, seq + len(lines))
        for index, (old, new) in enumerate(zip(stored, lines)):
            if old != new:
                return seq + index
        return seq + min(len(stored), len(lines))

    def _write(self, session: Session, lines: list[bytes]):
        ends = self._ends(session)
        data = b"\n".join(lines) + b"\n"
        fd = self._files.get(session)
        self._keep(session)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            self._log.error("session {safe_id}: write failed: {error}", safe_id=session.safe_id, error=e)
            self._cut_back(session, fd, session.written_size, f"a write failed ({e.strerror})")
            code = STORAGE_FULL if e.errno == errno.ENOSPC else STORAGE_FAILED
            raise StoreError(code, f"the server could not write the lines ({e.strerror}); "
                                   "nothing was stored, retry later") from None
        position = session.written_size
        for line in lines:
            position += len(line) + 1
            ends.append(position)
        session.written += len(lines)
        session.written_size = position
        session.pending_lines.extend(lines)
        session.sync_lines = True
        self._dirty.add(session)
        session.modified = self.clock.seconds()

    def _cut_back(self, session: Session, fd: int, size: int, why: str) -> None:
        """Truncate the file to `size`; if even that fails, fence the session (never splice)."""
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            self._fence(session, f"{why}, and cutting the file back failed too ({e.strerror})")

    def _fence(self, session: Session, reason: str) -> None:
        session.fenced = reason
        self._fenced.add(session)
        self._log.critical("session {safe_id}: {reason}; appends are refused until a restart recovers it",
                           safe_id=session.safe_id, reason=reason)

    def _free_space(self) -> int:
        """The bytes free under the store: asked of the file system at most once a second, less what was
        written since."""
        now = self.clock.seconds()
        if now - self._free_checked_at >= 1.0 or self._free_bytes is None:
            stat = os.statvfs(self.root)
            self._free_bytes = stat.f_bavail * stat.f_frsize
            self._free_checked_at = now
        return self._free_bytes

    def _check_space(self, needed: int):
        if not self.min_free_bytes:
            return
        if self._free_space() - needed < self.min_free_bytes:
            raise StoreError(STORAGE_FULL, f"the server's disk has less than "
                                           f"{self.min_free_bytes // MiB} MB free; nothing was stored. "
                                           "The operator must free space; the upload resumes after that")
        self._free_bytes -= needed

    # -- health ----------------------------------------------------------

    def problem(self) -> str | None:
        """None while the store takes work, else why not (for `/healthz`)."""
        if not self.running:
            return "the store is not open"
        if self._broken:
            return self._broken
        if self._loading is not None:
            return f"loading the store ({len(self._loading.sessions)} sessions read so far); uploads wait until done"
        pending = self.clock.seconds() - min((started for _, started in self._syncing.values()), default=float("inf"))
        if pending > COMMIT_STUCK_SECONDS:
            return f"a commit to disk has been pending for {pending:.0f} s: the disk under the store is stuck"
        if self._fenced:
            names = ", ".join(sorted(session.safe_id for session in self._fenced)[:5])
            return (f"{len(self._fenced)} session(s) cannot be written until a restart ({names}): "
                    "a failed write could not be rolled back; check the disk, then restart")
        if not self._root.writable():
            return f"the store folder {self.root} is not writable"
        free = self._free_space() if self.min_free_bytes else None
        if free is not None and free < self.min_free_bytes:
            return (f"the disk under the store has {free // MiB} MB free, less than --min-free-mb "
                    f"{self.min_free_bytes // MiB}: uploads are refused until space is freed")
        return None
