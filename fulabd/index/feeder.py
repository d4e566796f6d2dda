"""
Keeping the search index up to date, never on the ack path.

The feeder listens on the hub (`Hub.listeners`): durable lines and PARs are
queued, in the reactor, on a bounded queue and taken off it by one writer
thread that writes them to the index in transactions.  The session files are
the truth: when the queue is full, the session is only marked as behind and
the writer later reads what it missed from the file.  The same reading brings
the index up to date at start-up (each session's indexed line count and bytes
are in the index itself), rebuilds a deleted or damaged index, and picks up
local sessions, whose files may be rewritten.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from fulabd import edn
from fulabd.index import IndexUnusable, SessionInfo
from fulabd.index.sqlite import fingerprint

QUEUE_BYTES = 64 << 20      # line bytes waiting for the writer; past this, sessions catch up from their files
QUEUE_ITEMS = 10_000
BATCH_BYTES = 16 << 20      # per transaction (bigger ones index faster: fewer FTS5 segment merges)
END = 1 << 62               # "up to the end of the file"
READ_BYTES = 16 << 20       # read from a session file at a time (one transaction) when catching up
SWEEP_SECONDS = 10.0        # how often the sessions are compared with what was handed to the writer
PROGRESS_SECONDS = 5.0      # between progress lines in the log while catching up
RETRY_SECONDS = 5.0         # the writer's pause after a failed write
SWITCH_INTERVAL = 0.0005    # seconds a thread may hold the GIL while another waits (Python's default: 0.005)


def session_info(session) -> SessionInfo:
    meta = session.meta
    project = meta.get("project") or meta.get("cwd")
    return SessionInfo(session.path, session.session_id, session.safe_id, meta.get("source"),
                       project if isinstance(project, str) else None)


class WorkQueue:
    """A queue bounded by items and bytes that never blocks the side that offers."""

    def __init__(self, max_bytes: int, max_items: int):
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: deque = deque()
        self._bytes = 0
        self._closed = False
        self._ready = threading.Condition()

    def offer(self, item, size: int) -> bool:
        with self._ready:
            if self._closed or len(self._items) >= self.max_items or self._bytes + size > self.max_bytes:
                return False
            self._items.append((item, size))
            self._bytes += size
            self._ready.notify()
            return True

    def take(self, max_bytes: int) -> list | None:
        """Waits for items and takes them, up to about `max_bytes`; None once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._items or self._closed)
            if self._closed:
                return None
            taken, size = [], 0
            while self._items and (not taken or size + self._items[0][1] <= max_bytes):
                item, item_size = self._items.popleft()
                taken.append(item)
                size += item_size
            self._bytes -= size
            return taken

    @property
    def closed(self) -> bool:
        return self._closed

    def empty(self) -> bool:
        with self._ready:
            return not self._items

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


def read_lines(path: str, offset: int, count: int, until: int):
    """Lists of the complete lines of `path` from byte `offset`: at most `count` lines, none past byte `until`."""
    with open(path, "rb") as f:
        f.seek(offset)
        pending, consumed = b"", offset
        while count > 0 and consumed + len(pending) < until:
            data = f.read(min(READ_BYTES, until - consumed - len(pending)))
            if not data:
                return
            pending += data
            cut = pending.rfind(b"\n")
            if cut < 0:
                continue  # one line longer than a read
            lines = pending[:cut].split(b"\n")[:count]
            used = sum(len(line) + 1 for line in lines)
            pending, consumed, count = pending[used:], consumed + used, count - len(lines)
            yield lines


def par_path_of(key: str) -> str:
    """The PAR sidecar beside a session file (uploaded or local)."""
    return key[:-len(".jsonl")] + ".par.edn"


def read_pars(par_path: str) -> list[dict]:
    try:
        with open(par_path, "rb") as f:
            pars = edn.loads(f.read())
    except FileNotFoundError:
        return []
    pars = [pars] if isinstance(pars, dict) else pars if isinstance(pars, list) else []
    return [par for par in pars if isinstance(par, dict)]


class IndexFeeder(service.Service):
    """Feeds a `SearchIndex` from the hub and, when needed, from the session files of `sessions()`."""

    _log = Logger()

    def __init__(self, index, sessions, reactor, queue_bytes: int = QUEUE_BYTES,
                 sweep_seconds: float = SWEEP_SECONDS, ready=lambda: defer.succeed(None)):
        """`sessions()` lists every session to index; `ready()` fires once it lists those found at start-up
        (the store loads in a thread)."""
        self.index = index
        self.sessions = sessions
        self.reactor = reactor
        self.ready = ready
        self.sweep_seconds = sweep_seconds
        self._queue = WorkQueue(queue_bytes, QUEUE_ITEMS)
        self._handed: dict[str, tuple[int, int]] = {}  # key -> (lines, PARs) handed to the writer; the reactor's
        self._behind: set[str] = set()
        self._busy = False
        self._swept = False
        self._sweeper = None
        self._writer = None
        self._stopping = threading.Event()
        self._from_files = [0, 0, 0.0]  # bytes and sessions read from files since `started`, for the log
        self._logged_at = 0.0

    # -- the reactor's side ---------------------------------------------------------

    def startService(self):
        super().startService()
        # The writer holds the GIL while it turns lines into documents; the reactor, which gives the GIL up at
        # every system call, waits up to a switch interval to get it back each time: keep that wait short.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._writer = threading.Thread(target=self._run, name="fulabd-index", daemon=True)
        self._writer.start()
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        self.ready().addCallback(lambda _: self._sweeper.start(self.sweep_seconds, now=True)).addErrback(
            lambda f: self._log.failure("the search index's sweep stopped", f))

    def stopService(self):
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._stopping.set()
        self._queue.close()
        return threads.deferToThread(self._writer.join) if self._writer is not None else None

    def lines_appended(self, session, first: int, lines: list[bytes]) -> None:
        handed = self._handed.get(session.path, (0, 0))  # a new session starts at (0, 0)
        if session.path in self._behind or handed[0] != first:
            self._behind.add(session.path)  # the sweep hands over the file instead
            return
        size = sum(len(line) + 1 for line in lines)
        if self._queue.offer(("lines", session_info(session), first, lines), size):
            self._handed[session.path] = (first + len(lines), handed[1])
        else:
            self._behind.add(session.path)

    def par_added(self, session, index: int, par: dict) -> None:
        handed = self._handed.get(session.path, (0, 0))
        if session.path in self._behind or handed[1] != index:
            self._behind.add(session.path)
            return
        if self._queue.offer(("par", session_info(session), index, par), 1024):
            self._handed[session.path] = (handed[0], index + 1)
        else:
            self._behind.add(session.path)

    def sweep(self) -> None:
        """Hand the writer every session that changed without the hub's items reaching it."""
        seen = set()
        for session in self.sessions():
            key = session.path
            seen.add(key)
            now = (session.count, session.par_count)
            if key in self._behind or self._handed.get(key) != now:
                item = ("file", session_info(session), session.count, session.size)
                if not self._queue.offer(item, 0):
                    break  # full: the next sweep goes on
                self._handed[key] = now
                self._behind.discard(key)
        else:
            for key in set(self._handed) - seen:
                if self._queue.offer(("forget", key), 0):
                    del self._handed[key]
            self._swept = True

    def caught_up(self) -> bool:
        """Everything durable so far is searchable (as of the last sweep)."""
        return self._swept and not self._behind and not self._busy and self._queue.empty()

    def _start_over(self) -> None:
        """After the index was wiped: hand over every session again."""
        self._handed.clear()
        self._behind.clear()
        self._swept = False
        self.sweep()

    # -- the writer thread --------------------------------------------------------

    def _run(self) -> None:
        self._forget_missing()
        while (items := self._queue.take(BATCH_BYTES)) is not None:
            self._busy = True
            try:
                self._process(items)
            except IndexUnusable as e:
                self._log.error("the search index is damaged ({error}); rebuilding it from the session files",
                                error=e)
                self.index.reset()
                self.reactor.callFromThread(self._start_over)
            except Exception:
                self._log.failure("could not update the search index; retrying from the session files in "
                                  "{seconds} s", seconds=RETRY_SECONDS)
                keys = {item[1].key for item in items if item[0] != "forget"}
                self._stopping.wait(RETRY_SECONDS)
                self.reactor.callFromThread(self._behind.update, keys)
            finally:
                self._busy = False
            if self._from_files[0] and self._queue.empty():
                self._log_files_read("caught up")
        self.index.close()

    def _log_files_read(self, what: str) -> None:
        done, sessions, started = self._from_files
        seconds = max(self.reactor.seconds() - started, 1e-3)
        self._log.info("search index: {what}: {mb:.1f} MB from {sessions} session files in {seconds:.1f} s "
                       "({rate:.1f} MB/s)", what=what, mb=done / 2**20, sessions=sessions, seconds=seconds,
                       rate=done / 2**20 / seconds)
        if what == "caught up":
            self._from_files = [0, 0, 0.0]

    def _forget_missing(self) -> None:
        """Sessions whose files were deleted while the daemon was down are not searchable any more."""
        try:
            gone = [key for key in self.index.keys() if not os.path.exists(key)]
            if gone:
                with self.index.batch():
                    for key in gone:
                        self.index.forget(key)
                self._log.info("search index: forgot {count} sessions whose files are gone", count=len(gone))
        except IndexUnusable as e:
            self._log.error("the search index is damaged ({error}); rebuilding it", error=e)
            self.index.reset()

    def _process(self, items: list) -> None:
        run = []
        for item in items:
            if item[0] in ("lines", "par"):
                run.append(item)
                continue
            self._write(run)
            run = []
            if item[0] == "file":
                self._catch_up(*item[1:])
            else:
                with self.index.batch():
                    self.index.forget(item[1])
        self._write(run)

    def _write(self, items: list) -> None:
        if not items:
            return
        with self.index.batch():
            for kind, info, position, payload in items:
                if kind == "lines":
                    self._add_lines(info, position, payload)
                else:
                    self._add_par(info, position, payload)

    def _add_lines(self, info: SessionInfo, first: int, lines: list[bytes]) -> None:
        progress = self.index.progress(info.key)
        if first > progress.lines:  # items were dropped: the gap comes from the file
            for chunk in read_lines(info.key, progress.bytes, first - progress.lines, END):
                self.index.add_lines(info, self.index.progress(info.key).lines, chunk)
            progress = self.index.progress(info.key)
        if first + len(lines) > progress.lines >= first:
            self.index.add_lines(info, progress.lines, lines[progress.lines - first:])

    def _add_par(self, info: SessionInfo, index: int, par: dict) -> None:
        progress = self.index.progress(info.key)
        if index > progress.pars:
            self._add_pars_from(info, progress.pars)
            progress = self.index.progress(info.key)
        if index == progress.pars:
            self.index.add_par(info, index, par)

    def _add_pars_from(self, info: SessionInfo, start: int) -> None:
        for index, par in enumerate(read_pars(par_path_of(info.key))[start:], start):
            self.index.add_par(info, index, par)

    def _catch_up(self, info: SessionInfo, count: int, size: int) -> None:
        """Index what the session's files hold beyond what is indexed; a rewritten file is indexed afresh."""
        progress = self.index.progress(info.key)
        try:
            if count < progress.lines or size < progress.bytes or not self._same_head(info.key, progress):
                with self.index.batch():
                    self.index.forget(info.key)
                self._log.info("search index: {path} was rewritten; indexing it afresh", path=info.key)
                progress = self.index.progress(info.key)
            if count > progress.lines:
                self._read_file(info, progress, count, size)
            if self.index.progress(info.key).pars < len(read_pars(par_path_of(info.key))):
                with self.index.batch():
                    self._add_pars_from(info, self.index.progress(info.key).pars)
        except FileNotFoundError:
            pass  # deleted meanwhile: the next sweep forgets it

    def _same_head(self, path: str, progress) -> bool:
        if progress.lines == 0 or progress.head is None:
            return True
        first = next(read_lines(path, 0, 1, progress.bytes), [b""])[0]
        return fingerprint(first) == progress.head

    def _read_file(self, info: SessionInfo, progress, count: int, size: int) -> None:
        if not self._from_files[0]:
            self._from_files[2] = self._logged_at = self.reactor.seconds()
        self._from_files[1] += 1
        for lines in read_lines(info.key, progress.bytes, count - progress.lines, size):
            if self._stopping.is_set():
                return  # the rest is indexed at the next start
            with self.index.batch():
                self.index.add_lines(info, self.index.progress(info.key).lines, lines)
            self._from_files[0] += sum(len(line) + 1 for line in lines)
            if self.reactor.seconds() - self._logged_at >= PROGRESS_SECONDS:
                self._logged_at = self.reactor.seconds()
                self._log_files_read("indexing")
