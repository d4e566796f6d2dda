"""
The session store: `<root>/<safe-id>.jsonl` plus `.meta.edn` and `.par.edn` sidecars.

Lines are written in the reactor thread as they arrive (so one session's
writes are serialized whatever connection they come from) and made durable by
a group commit: one thread job fdatasyncs every session written since the last
job, writes the PAR and meta sidecars that changed, and only then are the
waiting acks fired and the new lines published to viewers.

The store knows nothing of WebSockets: callers get a Deferred that fires once
what they asked for is on disk, or fails with a `ProtocolError`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from fulabd import edn
from fulabd.messages import (
    CONFLICT, GAP, STORAGE_FAILED, STORAGE_FULL, ProtocolError, now_iso,
)

SAFE_ID_LENGTH = 128
READ_CHUNK = 1 << 20
META_INTERVAL = 1.0
IDLE_CLOSE_SECONDS = 60.0
SYNC_THREADS = 16
PAR_KEYWORD_VALUES = frozenset({"tags", "participants"})

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_id(raw: str) -> str:
    """A file-name-safe form of a session id; distinct ids never share files."""
    cleaned = _UNSAFE.sub("_", raw)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    cleaned = cleaned[:SAFE_ID_LENGTH]
    if cleaned != raw or not raw:
        cleaned = f"{cleaned}-{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:8]}"
    return cleaned


@dataclass(frozen=True)
class AppendResult:
    count: int
    appended: int
    dedup: bool


class Session:
    """One stored session: its files, its durable position, and what is in flight."""

    def __init__(self, root: str, session_id: str, safe: str):
        self.session_id = session_id
        self.safe_id = safe
        self.jsonl_path = os.path.join(root, f"{safe}.jsonl")
        self.meta_path = os.path.join(root, f"{safe}.meta.edn")
        self.par_path = os.path.join(root, f"{safe}.par.edn")
        self.meta: dict = {}
        self.count = 0        # lines durable on disk: what resume and acks report
        self.size = 0         # bytes durable on disk
        self.written = 0      # lines written, durable or not yet
        self.written_size = 0
        self.modified = 0.0
        self.uploaders = 0
        self.stored = False   # its .jsonl exists
        self.pars: list[dict] | None = None  # loaded on first use
        self.par_count = 0
        self._ends: array | None = None       # end offset of each written line, built on first use
        self._fd: int | None = None
        self._pending_lines: list[bytes] = []  # written, not yet durable (for publishing)
        self._pending_pars: list[tuple[int, dict]] = []
        self._waiters: list[defer.Deferred] = []
        self._sync_lines = False
        self._write_pars = False
        self._meta_due = False
        self._meta_written_at = float("-inf")
        self._meta_dirty = False
        self._meta_writing = False
        self._last_used = 0.0

    @property
    def path(self) -> str:
        return os.path.abspath(self.jsonl_path)

    def describe(self) -> dict:
        return {"session-id": self.session_id, "safe-id": self.safe_id, "count": self.count,
                "size": self.size, "pars": self.par_count}


class SessionStore(service.Service):
    """Durable, deduplicating storage of session lines and PARs under one root folder."""

    _log = Logger()

    def __init__(self, root: str, clock=None, hub=None, run_in_thread=None, min_free_bytes: int = 0,
                 observe_fsync=None):
        """`observe_fsync(seconds)` is told how long each fdatasync took (for metrics)."""
        from twisted.internet import reactor

        self.root = os.path.abspath(root)
        self.clock = clock or reactor
        self.hub = hub
        self.min_free_bytes = min_free_bytes
        self.observe_fsync = observe_fsync
        self._run_in_thread = run_in_thread or threads.deferToThread
        self._syncers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fulabd-sync")
        self._sessions: dict[str, Session] = {}
        self._dirty: set[Session] = set()
        self._committing = False
        self._housekeeping = None
        self._meta_writes = defer.succeed(None)
        self._free_checked_at = float("-inf")
        self._free_bytes = None

    # -- service ---------------------------------------------------------

    def startService(self):
        super().startService()
        os.makedirs(self.root, exist_ok=True)
        self.load()
        self._housekeeping = task.LoopingCall(self._tidy)
        self._housekeeping.clock = self.clock
        self._housekeeping.start(META_INTERVAL, now=False).addErrback(
            lambda f: self._log.failure("store housekeeping stopped", f))

    @defer.inlineCallbacks
    def stopService(self):
        if self._housekeeping is not None and self._housekeeping.running:
            self._housekeeping.stop()
        yield self._meta_writes
        for session in self._sessions.values():
            if session._meta_dirty:
                session._meta_due = True
                self._dirty.add(session)
        yield self.flush()
        for session in self._sessions.values():
            self._close(session)
        self._syncers.shutdown(wait=False)
        yield super().stopService()

    def load(self):
        """Read what is on disk: cut torn tails, count lines, read sidecars."""
        for name in sorted(os.listdir(self.root)):
            if not name.endswith(".jsonl"):
                continue
            safe = name[:-len(".jsonl")]
            session = Session(self.root, safe, safe)
            session.stored = True
            self._recover(session)
            self._sessions[safe] = session
        self._log.info("store at {root} holds {sessions} sessions", root=self.root, sessions=len(self._sessions))

    def _recover(self, session: Session):
        cut = cut_torn_tail(session.jsonl_path)
        if cut:
            self._log.warn("session {safe_id}: cut a torn last line of {bytes} bytes left by a crash",
                           safe_id=session.safe_id, bytes=cut)
        session.count = session.written = count_lines(session.jsonl_path)
        session.size = session.written_size = os.path.getsize(session.jsonl_path)
        session.modified = os.path.getmtime(session.jsonl_path)
        session.meta = self._read_sidecar(session.meta_path, dict) or {}
        raw = session.meta.get("session-id")
        if isinstance(raw, str) and safe_id(raw) == session.safe_id:
            session.session_id = raw
        else:
            session.meta.pop("session-id", None)
        pars = self._read_sidecar(session.par_path, list)
        session.par_count = len(pars) if pars else 0
        if session.meta.get("event-count") != session.count or session.meta.get("par-count") != session.par_count:
            session.meta["event-count"] = session.count
            session.meta["par-count"] = session.par_count
            session._meta_dirty = "session-id" in session.meta
        for leftover in (session.meta_path + ".tmp", session.par_path + ".tmp"):
            if os.path.exists(leftover):
                os.unlink(leftover)

    def _read_sidecar(self, path: str, kind: type):
        """An EDN sidecar, or None; an unreadable one is set aside, never overwritten."""
        try:
            with open(path, "rb") as f:
                value = edn.loads(f.read())
        except FileNotFoundError:
            return None
        except Exception as e:
            aside = f"{path}.unreadable-{int(self.clock.seconds())}"
            os.replace(path, aside)
            self._log.error("could not read {path} ({error}); moved it to {aside} and started afresh",
                            path=path, error=e, aside=aside)
            return None
        if kind is list and isinstance(value, dict):
            value = [value]
        return value if isinstance(value, kind) else None

    # -- lookups ---------------------------------------------------------

    def sessions(self) -> list[Session]:
        """Every session that has files on disk."""
        return [session for session in self._sessions.values() if session.stored]

    def get(self, session_id: str) -> Session | None:
        """The session with this raw id, if it has been stored."""
        return self._sessions.get(safe_id(session_id))

    def by_safe_id(self, safe: str) -> Session | None:
        return self._sessions.get(safe)

    def session(self, session_id: str) -> Session:
        """The session with this raw id, created (without files) when new."""
        safe = safe_id(session_id)
        session = self._sessions.get(safe)
        if session is None:
            session = Session(self.root, session_id, safe)
            self._sessions[safe] = session
        elif "session-id" not in session.meta:
            session.session_id = session_id
        elif session.meta["session-id"] != session_id:
            raise ProtocolError(CONFLICT, f"session id {session_id!r} maps to the files of another session "
                                          f"({session.session_id!r}); choose another id")
        return session

    def resume(self, session_id: str) -> defer.Deferred:
        """The durable line count, once everything written so far is durable."""
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
        try:
            session = self.session(session_id)
            result = self._append_now(session, seq, lines, meta)
        except ProtocolError as e:
            return defer.fail(e)
        return self._durable(session).addCallback(
            lambda _: AppendResult(count=session.count, appended=result, dedup=result == 0))

    def _append_now(self, session: Session, seq: int | None, lines: list[bytes], meta: dict | None) -> int:
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
        fd = self._fd(session)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            os.ftruncate(fd, session.written_size)
            code = STORAGE_FULL if e.errno == errno.ENOSPC else STORAGE_FAILED
            self._log.error("session {safe_id}: write failed: {error}", safe_id=session.safe_id, error=e)
            raise ProtocolError(code, f"the server could not write the lines ({e.strerror}); "
                                      "nothing was stored, retry later") from None
        position = session.written_size
        for line in lines:
            position += len(line) + 1
            ends.append(position)
        session.written += len(lines)
        session.written_size = position
        session._pending_lines.extend(lines)
        session._sync_lines = True
        self._dirty.add(session)
        session.modified = self.clock.seconds()
        session.meta["event-count"] = session.written
        self._meta_changed(session)

    def _check_space(self, needed: int):
        if not self.min_free_bytes:
            return
        now = self.clock.seconds()
        if now - self._free_checked_at >= 1.0 or self._free_bytes is None:
            stat = os.statvfs(self.root)
            self._free_bytes = stat.f_bavail * stat.f_frsize
            self._free_checked_at = now
        if self._free_bytes - needed < self.min_free_bytes:
            raise ProtocolError(STORAGE_FULL, f"the server's disk has less than "
                                              f"{self.min_free_bytes // (1024 * 1024)} MB free; nothing was stored. "
                                              "The operator must free space; the upload resumes after that")
        self._free_bytes -= needed

    def _update_meta(self, session: Session, meta: dict, init_count: int):
        now = now_iso(self.clock.seconds())
        session.meta.setdefault("created-at", now)
        session.meta.update({key: value for key, value in meta.items()})
        session.meta["session-id"] = session.session_id
        session.meta["init/complete"] = True
        session.meta["init/event-count"] = init_count
        session._meta_due = True
        self._meta_changed(session)

    def update_meta(self, session_id: str, **values) -> None:
        """Record extra metadata (e.g. the uploader's name) with the next commit."""
        session = self.session(session_id)
        changed = {key: value for key, value in values.items() if session.meta.get(key) != value}
        if changed:
            session.meta.update(changed)
            session._meta_due = True
            self._meta_changed(session)

    def _meta_changed(self, session: Session):
        """The metadata must be rewritten: with the next commit if it was never written, else within a second."""
        if not session._meta_dirty:
            if not session.stored:
                self._fd(session)
            session.meta.setdefault("session-id", session.session_id)
            session.meta.setdefault("created-at", now_iso(self.clock.seconds()))
            session.meta.setdefault("event-count", session.written)
            session.meta.setdefault("par-count", session.par_count)
            if session._meta_written_at == float("-inf") and not os.path.exists(session.meta_path):
                session._meta_due = True
            session._meta_dirty = True
        if session._meta_due:
            self._dirty.add(session)

    # -- PARs --------------------------------------------------------------

    def pars(self, session: Session) -> list[dict]:
        if session.pars is None:
            session.pars = self._read_sidecar(session.par_path, list) or []
            session.par_count = len(session.pars)
        return session.pars

    def add_par(self, session_id: str, par: dict) -> defer.Deferred:
        """Append a PAR to the session's sidecar; fires with (index, par, added) once durable.

        A PAR whose id is already stored is not added again.
        """
        try:
            session = self.session(session_id)
        except ProtocolError as e:
            return defer.fail(e)
        pars = self.pars(session)
        par = self._complete_par(par)
        for index, existing in enumerate(pars):
            if existing.get("id") == par["id"]:
                return self._durable(session).addCallback(lambda _: (index, existing, False))
        pars.append(par)
        index = len(pars) - 1
        session.par_count = len(pars)
        session._pending_pars.append((index, par))
        session._write_pars = True
        self._dirty.add(session)
        session.meta["par-count"] = session.par_count
        self._meta_changed(session)
        return self._durable(session).addCallback(lambda _: (index, par, True))

    def _complete_par(self, par: dict) -> dict:
        par = dict(par)
        now = self.clock.seconds()
        if not isinstance(par.get("id"), str) or not par["id"]:
            par["id"] = par.pop("par-id", None) or (
                f"par-{datetime.fromtimestamp(now, timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}")
        par.setdefault("timestamp", now_iso(now))
        tags = par.get("tags")
        if isinstance(tags, str):
            par["tags"] = [tag for tag in re.split(r"[\s,]+", tags) if tag]
        return par

    # -- group commit ----------------------------------------------------

    def _durable(self, session: Session) -> defer.Deferred:
        """Fires once everything done to `session` so far is on disk."""
        if session not in self._dirty and not session._waiters and not self._committing:
            return defer.succeed(None)
        waiter = defer.Deferred()
        session._waiters.append(waiter)
        self._dirty.add(session)
        self._kick()
        return waiter

    def _kick(self):
        if not self._committing and self._dirty:
            self._commit()

    def flush(self) -> defer.Deferred:
        """Fires once every change made so far is on disk."""
        waiters = [self._durable(session) for session in list(self._dirty)]
        return defer.DeferredList(waiters, consumeErrors=True)

    def _commit(self):
        now = self.clock.seconds()
        batch = []
        for session in list(self._dirty):
            meta_due = session._meta_due and not session._meta_writing
            if not (session._sync_lines or session._write_pars or meta_due or session._waiters):
                continue
            self._dirty.discard(session)
            job = CommitJob(
                session=session,
                fd=session._fd if session._sync_lines else None,
                pars=edn.dumps(session.pars, PAR_KEYWORD_VALUES) if session._write_pars else None,
                meta=self._meta_taken(session, now) if meta_due else None,
                lines=session.written, size=session.written_size,
                published_lines=session._pending_lines, published_pars=session._pending_pars,
                waiters=session._waiters)
            session._pending_lines, session._pending_pars, session._waiters = [], [], []
            session._sync_lines = session._write_pars = False
            batch.append(job)
        if not batch:
            return
        self._committing = True
        self._run_in_thread(run_commit_jobs, batch, self._syncers).addCallback(self._committed, batch)

    def _committed(self, errors: list, batch: list):
        self._committing = False
        for job, error in zip(batch, errors):
            session = job.session
            if job.meta is not None:
                session._meta_writing = False
            if error is None:
                if job.fd is not None and self.observe_fsync is not None:
                    self.observe_fsync(job.fsync_seconds)
                first = session.count
                session.count, session.size = job.lines, job.size
                self._publish(session, first, job)
                for waiter in job.waiters:
                    waiter.callback(None)
            else:
                self._log.error("session {safe_id}: could not make writes durable: {error}",
                                safe_id=session.safe_id, error=error)
                self._rollback(session)
                failure = ProtocolError(STORAGE_FAILED, f"the server could not store the lines durably "
                                                        f"({error}); nothing was acknowledged, resume and resend")
                for waiter in job.waiters + session._waiters:
                    waiter.errback(failure)
                session._waiters = []
        self._kick()

    def _publish(self, session: Session, first: int, job: CommitJob):
        if self.hub is None:
            return
        if job.published_lines:
            self.hub.lines_appended(session, first, job.published_lines)
        for index, par in job.published_pars:
            self.hub.par_added(session, index, par)

    def _rollback(self, session: Session):
        """Forget every write that is not durable: the file goes back to its durable size."""
        self._close(session)
        try:
            os.truncate(session.jsonl_path, session.size)
        except OSError as e:
            self._log.error("session {safe_id}: could not truncate after a failed write: {error}",
                            safe_id=session.safe_id, error=e)
        session.written, session.written_size = session.count, session.size
        session._ends = None
        session._pending_lines = []
        session._sync_lines = False
        if session._write_pars or session._pending_pars:
            session.pars = None
            session._pending_pars = []
            session._write_pars = False
            session.par_count = len(self.pars(session))
        session.meta["event-count"] = session.count
        session.meta["par-count"] = session.par_count

    # -- files -------------------------------------------------------------

    def _fd(self, session: Session) -> int:
        if session._fd is None:
            session._fd = os.open(session.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            session.stored = True
        session._last_used = self.clock.seconds()
        return session._fd

    def _close(self, session: Session):
        if session._fd is not None:
            os.close(session._fd)
            session._fd = None

    def _meta_taken(self, session: Session, now: float) -> bytes:
        """The metadata to write now; the session's meta is clean until it changes again."""
        session.meta["updated-at"] = now_iso(now)
        session._meta_dirty = session._meta_due = False
        session._meta_written_at = now
        session._meta_writing = True
        return edn.dumps(session.meta)

    def _tidy(self):
        """Refresh metadata that changed (at most once a second each, off the ack path); close idle files."""
        try:
            self._tidy_now()
        except Exception:
            self._log.failure("store housekeeping failed; trying again in {interval} s", interval=META_INTERVAL)

    def _tidy_now(self):
        now = self.clock.seconds()
        due = []
        for session in self._sessions.values():
            if session._meta_dirty:
                if not session._meta_writing and now - session._meta_written_at >= META_INTERVAL:
                    due.append(session)
            elif (session._fd is not None and session not in self._dirty and not session.uploaders
                  and now - session._last_used >= IDLE_CLOSE_SECONDS and not self._committing):
                self._close(session)
        if due:
            files = [(session.meta_path, self._meta_taken(session, now)) for session in due]
            self._meta_writes = self._run_in_thread(edn.write_all_atomically, files).addCallback(
                self._metas_written, due)

    def _metas_written(self, errors: list, sessions: list[Session]):
        for session, error in zip(sessions, errors):
            session._meta_writing = False
            if error is not None:
                session._meta_dirty = True
                self._log.error("session {safe_id}: could not write {path}: {error}; will retry",
                                safe_id=session.safe_id, path=session.meta_path, error=error)
        self._kick()

    def _ends(self, session: Session) -> array:
        if session._ends is None:
            session._ends = line_ends(session.jsonl_path, session.written_size)
        return session._ends

    # -- reading ---------------------------------------------------------

    def _read_span(self, session: Session, start: int, stop: int) -> bytes:
        """The bytes of written lines `start` to `stop`, newlines included."""
        ends = self._ends(session)
        stop = min(stop, session.written)
        if start >= stop:
            return b""
        begin = ends[start - 1] if start else 0
        with open(session.jsonl_path, "rb") as f:
            f.seek(begin)
            return f.read(ends[stop - 1] - begin)

    def read_written(self, session: Session, start: int, stop: int) -> list[bytes]:
        data = self._read_span(session, start, stop)
        return data[:-1].split(b"\n") if data else []

    def read_lines(self, session: Session, start: int, max_lines: int | None = None,
                   max_bytes: int | None = None) -> list[bytes]:
        """Durable lines from `start`: at most `max_lines`, and past the first, at most `max_bytes`."""
        stop = session.count if max_lines is None else min(session.count, start + max_lines)
        if max_bytes is not None and start < stop:
            ends = self._ends(session)
            begin = ends[start - 1] if start else 0
            limit = start + 1
            while limit < stop and ends[limit] - begin <= max_bytes:
                limit += 1
            stop = limit
        return self.read_written(session, start, stop)


@dataclass
class CommitJob:
    session: Session
    fd: int | None
    pars: bytes | None
    meta: bytes | None
    lines: int
    size: int
    published_lines: list
    published_pars: list
    waiters: list
    fsync_seconds: float = 0.0


def run_commit_jobs(batch: list[CommitJob], syncers: ThreadPoolExecutor | None = None) -> list:
    """In a thread: make each job durable; one error per job (None when it worked).

    The jobs run concurrently on `syncers`: a journaling file system (ext4,
    XFS) folds concurrent fsyncs into one journal commit, so a commit of 50
    sessions costs about one fsync instead of 50 in a row (measured here:
    50 fdatasyncs take 100-600 ms in a row, 10-30 ms from 16 threads).
    """
    if syncers is None or len(batch) == 1:
        return [run_commit_job(job) for job in batch]
    return list(syncers.map(run_commit_job, batch))


def run_commit_job(job: CommitJob) -> OSError | None:
    try:
        if job.fd is not None:
            started = time.perf_counter()
            os.fdatasync(job.fd)
            job.fsync_seconds = time.perf_counter() - started
        if job.pars is not None:
            edn.write_atomically(job.session.par_path, job.pars)
        if job.meta is not None:
            edn.write_atomically(job.session.meta_path, job.meta)
    except OSError as e:
        return e
    return None


def cut_torn_tail(path: str) -> int:
    """Cut a last line that has no newline (left by a crash mid-write); the bytes cut."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        position = size
        while position > 0:
            start = max(0, position - READ_CHUNK)
            f.seek(start)
            chunk = f.read(position - start)
            if position == size and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            count += chunk.count(b"\n")
    return count


def line_ends(path: str, size: int) -> array:
    """The offset just past each line's newline, for the first `size` bytes of the file."""
    ends = array("q")
    if size == 0:
        return ends
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            chunk = f.read(min(READ_CHUNK, size - offset))
            if not chunk:
                break
            position = chunk.find(b"\n")
            while position >= 0:
                ends.append(offset + position + 1)
                position = chunk.find(b"\n", position + 1)
            offset += len(chunk)
    return ends
