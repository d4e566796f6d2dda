"""
Local sources: sessions that agents write on the server machine itself
(`--codex-dir ~/.codex/sessions`, `--claude-dir ~/.claude/projects`), listed
and streamed like uploaded ones.

Files are watched (inotify through watchdog), never polled.  Only complete
lines count: a partial last line is held back until its newline arrives, then
published to the hub like an uploaded line.  Each file keeps an index of line
end offsets, so history is read by line without loading the file.
"""

from __future__ import annotations

import os
from array import array
from pathlib import PurePath

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from fulabd import edn, formats
from fulabd.catalog import NotInside, find_session, open_inside
from fulabd.par_schema import sidecar_pars
from fulabd.store import line_ends, safe_id

GROW_BYTES = 4 * 1024 * 1024  # read of appended data per reactor turn


class LocalSession:
    """A session file under a local folder; the same attributes the listings and viewers use on store sessions."""

    uploaders = 0
    stored = True

    def __init__(self, path: str, source: str):
        self.path = path
        self.source = source
        self.session_id = self.safe_id = ""
        self.meta: dict = {"source": source}
        self.ends = array("q")
        self.count = 0
        self.size = 0        # bytes of complete lines
        self.modified = 0.0
        self.pars: list[dict] = []
        self.par_count = 0

    @property
    def par_path(self) -> str:
        return self.path[:-len(".jsonl")] + ".par.edn"


def identify(session: LocalSession, head: bytes) -> None:
    """Session id and metadata from a file's first lines, by `fulabd.formats`' rules (the uploader's too)."""
    _, identity = formats.identify(PurePath(session.path), head, session.source)
    session.session_id = identity.session_id
    session.safe_id = safe_id(identity.session_id)
    session.meta = {"source": session.source, "session-id": identity.session_id} | identity.meta()
    session.meta.setdefault("project", os.path.basename(os.path.dirname(session.path)))


def index_file(path: str, source: str) -> LocalSession:
    """In a thread: a session for the file, with the end offset of every complete line."""
    session = LocalSession(path, source)
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        identify(session, f.read(formats.HEAD_BYTES))
    session.ends = line_ends(path, size)
    session.count = len(session.ends)
    session.size = session.ends[-1] if session.ends else 0
    session.modified = os.path.getmtime(path)
    return session


class LocalSources(service.Service):
    """Every `*.jsonl` under the given folders, indexed in threads and followed as it grows."""

    confined = False  # files found in folders may be symlinks to anywhere: each is checked

    _log = Logger()

    def __init__(self, folders: list[tuple[str, str]], hub, reactor, run_in_thread=None):
        self.folders = [(source, os.path.abspath(os.path.expanduser(folder))) for source, folder in folders]
        self.hub = hub
        self.reactor = reactor
        self._run_in_thread = run_in_thread or threads.deferToThread
        self._sessions: dict[str, LocalSession] = {}
        self._indexing: dict[str, bool] = {}  # path -> changed again while being indexed
        self._observer = None

    @property
    def roots(self) -> list[str]:
        return [folder for _, folder in self.folders]

    # -- service -------------------------------------------------------------

    def startService(self):
        super().startService()
        self._observer = Observer()
        self._observer.start()  # watching before the walk below: no file is missed in between
        handler = _Forward(self)
        for source, folder in self.folders:
            if not os.path.isdir(folder):
                self._log.warn("local {source} folder {folder} does not exist; no {source} sessions will be "
                               "listed until it is created and the daemon restarted", source=source, folder=folder)
                continue
            self._observer.schedule(handler, folder, recursive=True)
            found = [self._changed(os.path.join(directory, name), announce=False)
                     for directory, _, names in os.walk(folder) for name in names]
            defer.DeferredList([d for d in found if d is not None]).addCallback(
                lambda _, source=source, folder=folder: self._log.info(
                    "following {count} local {source} sessions under {folder}", source=source, folder=folder,
                    count=sum(session.source == source for session in self._sessions.values())))

    def stopService(self):
        super().stopService()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)

    # -- the catalog's source interface ------------------------------------------

    def sessions(self) -> list[LocalSession]:
        return list(self._sessions.values())

    def lookup(self, ident: str) -> LocalSession | None:
        return find_session(self._sessions.values(), ident)

    def read_lines(self, session: LocalSession, start: int, max_lines: int | None = None,
                   max_bytes: int | None = None) -> list[bytes]:
        """Complete lines from `start`: at most `max_lines`, and past the first, at most `max_bytes`."""
        ends = session.ends
        stop = session.count if max_lines is None else min(session.count, start + max_lines)
        if start >= stop:
            return []
        begin = ends[start - 1] if start else 0
        if max_bytes is not None:
            limit = start + 1
            while limit < stop and ends[limit] - begin <= max_bytes:
                limit += 1
            stop = limit
        try:
            with open_inside(session.path, self.roots) as f:
                f.seek(begin)
                data = f.read(ends[stop - 1] - begin)
        except FileNotFoundError:
            return []  # deleted: the watcher forgets it
        except NotInside as e:
            self._log.warn("not serving {path}: {why}", path=session.path, why=e)
            return []
        lines = data[:-1].split(b"\n")
        if len(lines) != stop - start:  # the file was rewritten under us: serve nothing rather than wrong lines
            self._log.warn("{path} changed under a reader; re-indexing it", path=session.path)
            self.reactor.callLater(0, self._changed, session.path)
            return []
        return lines

    def pars(self, session: LocalSession) -> list[dict]:
        return session.pars

    # -- following files ---------------------------------------------------------

    def _source_of(self, path: str) -> str | None:
        for source, folder in self.folders:
            if path.startswith(folder + os.sep):
                if source == "claude" and f"{os.sep}subagents{os.sep}" in path[len(folder):]:
                    return None  # sub-agent transcripts stay with their session, as the old listing did
                return source
        return None

    def _changed(self, path: str, announce: bool = True) -> defer.Deferred | None:
        """A file under a folder was created, written, moved in or deleted."""
        if path.endswith(".par.edn"):
            session = self._sessions.get(path[:-len(".par.edn")] + ".jsonl")
            if session is not None:
                self._read_pars(session)
            return None
        source = self._source_of(path) if path.endswith(".jsonl") else None
        if source is None:
            return None
        if path in self._indexing:
            self._indexing[path] = True  # look again once the index is built
            return None
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            if self._sessions.pop(path, None) is not None:
                self._log.info("local session {path} is gone", path=path)
            return None
        session = self._sessions.get(path)
        if session is None or size < session.size:
            self._indexing[path] = False
            return self._run_in_thread(index_file, path, source).addBoth(
                self._indexed, path, replaced=session is not None, announce=announce)
        if size > session.size:
            self._grow(session)
        return None

    def _indexed(self, result, path: str, replaced: bool, announce: bool) -> None:
        again = self._indexing.pop(path)
        if isinstance(result, Failure):
            if not result.check(FileNotFoundError):
                self._log.failure("could not index local session {path}", result, path=path)
            return
        self._sessions[path] = result
        self._read_pars(result)
        if replaced:
            self._log.warn("local session {path} shrank: it was rewritten; indexed it afresh", path=path)
        elif announce:
            self._log.info("new local {source} session {path} ({count} lines)", source=result.source, path=path,
                           count=result.count)
        if again:
            self._changed(path)

    def _grow(self, session: LocalSession) -> None:
        """Publish the complete lines appended since the last look, a bounded chunk at a time."""
        chunks = []
        try:
            f = open_inside(session.path, self.roots)
        except NotInside as e:
            self._log.warn("not serving {path}: {why}", path=session.path, why=e)
            return
        with f:
            f.seek(session.size)
            while chunk := f.read(GROW_BYTES):
                chunks.append(chunk)
                if b"\n" in chunk:
                    break
        if chunks and len(chunks[-1]) == GROW_BYTES:
            self.reactor.callLater(0, self._changed, session.path)  # more follows: the next chunk next turn
        data = b"".join(chunks)
        complete = data[:data.rfind(b"\n") + 1]
        if not complete:
            return  # only a partial line so far: wait for its newline
        lines = complete[:-1].split(b"\n")
        position = session.size
        for line in lines:
            position += len(line) + 1
            session.ends.append(position)
        first = session.count
        if first == 0:  # created empty: its first lines say who it is
            identify(session, complete[:formats.HEAD_BYTES])
        session.count += len(lines)
        session.size = position
        session.modified = os.path.getmtime(session.path)
        self.hub.lines_appended(session, first, lines)

    def _read_pars(self, session: LocalSession) -> None:
        try:
            with open_inside(session.par_path, self.roots) as f:
                pars = edn.loads(f.read())
        except FileNotFoundError:
            return
        except Exception as e:
            self._log.warn("could not read {path} ({error}); its PARs are not shown", path=session.par_path, error=e)
            return
        known = len(session.pars)
        session.pars = sidecar_pars(pars)
        session.par_count = len(session.pars)
        for index in range(known, len(session.pars)):
            self.hub.par_added(session, index, session.pars[index])


CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})


class _Forward(FileSystemEventHandler):
    """Watchdog's thread → the reactor: which paths changed."""

    def __init__(self, sources: LocalSources):
        self.sources = sources

    def on_any_event(self, event):
        if event.is_directory or event.event_type not in CHANGES:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path:
                self.sources.reactor.callFromThread(self.sources._changed, os.fsdecode(path))
