"""
Archived sessions (`--archive-dir DIR`): the futon3 lab's exported sessions,
one JSON object per `*.json` file, listed, merged into the listings and opened
in the viewer like any other session.

An archive holds a session's user and assistant messages, not its lines, so
this source makes one synthetic Claude-shaped JSONL line per message
(`{"type":"user"|"assistant","timestamp":T,"message":{"role":…,"content":TEXT}}`),
in time order, which `events.normalize` turns into user and assistant events;
the archive's `lab/par-events` are its PARs.  Files are read and parsed in a
thread, at start and on a rescan every `RESCAN_SECONDS` (a stat per file:
only new or changed files are read again), and only the messages (packed in
one buffer) and PARs are kept in memory.  Archives are hostile input: a file
over `MAX_ARCHIVE_BYTES`, not JSON or not in the archive shape is still
listed, with an `error` saying what is wrong, and logged once per change of
the file; past `MAX_MESSAGES` the rest is left out, and said so.
"""

from __future__ import annotations

import os
from array import array
from datetime import datetime

import orjson
from twisted.application import service
from twisted.internet import task, threads
from twisted.logger import Logger
from twisted.web import resource

from fulabd.catalog import find_session
from fulabd.messages import json_bytes, now_iso
from fulabd.store import safe_id
from fulabd.web import render_data

MAX_ARCHIVE_BYTES = 16 * 1024 * 1024  # an archive larger than this is listed with an error, not read
MAX_MESSAGES = 100_000                # messages (and PAR events) read of one archive; the rest left out, said so
RESCAN_SECONDS = 5.0                  # between looks at the folders for new, changed and removed archives
DEFAULT_SOURCE = "archived"           # `source` of an archive without `lab/source` (the old lab's value)
PAR_HEADER = "## PAR: "
MESSAGE_LISTS = (("user", "lab/user-messages"), ("assistant", "lab/assistant-messages"))


class ArchiveSession:
    """One archive file; the attributes the listings and the viewer use on any session."""

    uploaders = 0
    stored = True

    def __init__(self, path: str, stamp: tuple[int, int]):
        self.path = path
        self.stamp = stamp  # (mtime_ns, size): a rescan reads the file again when it differs
        self.size = stamp[1]
        self.modified = stamp[0] / 1e9
        self.session_id = os.path.basename(path)[:-len(".json")]
        self.safe_id = safe_id(self.session_id)
        self.meta: dict = {"source": DEFAULT_SOURCE, "archived": True}
        self.pars: list[dict] = []
        self.problems: list[str] = []
        self.pack([])

    def pack(self, lines: list[bytes]) -> None:
        """Keep `lines` as one buffer and their end offsets (small bytes objects cost far more than their size)."""
        self._data = b"\n".join(lines)
        self._ends = array("q")
        end = -1
        for line in lines:
            end += len(line) + 1
            self._ends.append(end)

    def lines(self, start: int, stop: int) -> list[bytes]:
        if start >= stop:
            return []
        begin = self._ends[start - 1] + 1 if start else 0
        return self._data[begin:self._ends[stop - 1]].split(b"\n")

    def line_size(self, index: int) -> int:
        return self._ends[index] - (self._ends[index - 1] if index else -1)

    @property
    def count(self) -> int:
        return len(self._ends)

    @property
    def par_count(self) -> int:
        return len(self.pars)

    @property
    def error(self) -> str | None:
        return "; ".join(self.problems) or None


def as_text(value) -> str:
    """Message text of any JSON type: strings as they are, null as empty, anything else as its JSON."""
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value).decode()


def _string(value) -> str | None:
    return value if isinstance(value, str) else None


def _instant(value) -> float | None:
    """Epoch seconds of an ISO 8601 timestamp string, else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # naive times cannot be ordered against zoned ones; keep the list order instead
    return moment.timestamp()


def message_lines(archive: dict, problems: list[str]) -> list[bytes]:
    """The synthetic lines of the user and assistant messages, in time order.

    Each message sorts by its timestamp, a message without a usable one by the
    last timestamp before it in its own list (so each list keeps its order),
    and on equal times a user message comes before the assistant's reply.
    """
    keyed = []
    for rank, (role, key) in enumerate(MESSAGE_LISTS):
        messages = archive.get(key)
        if messages is None:
            continue
        if not isinstance(messages, list):
            problems.append(f"{key} is not a list")
            continue
        if len(keyed) + len(messages) > MAX_MESSAGES:
            problems.append(f"{key}: {len(keyed) + len(messages) - MAX_MESSAGES} messages over the limit of "
                            f"{MAX_MESSAGES} left out")
            messages = messages[:MAX_MESSAGES - len(keyed)]
        last = float("-inf")
        for position, message in enumerate(messages):
            fields = message if isinstance(message, dict) else {"text": message}
            timestamp = _string(fields.get("timestamp"))
            moment = _instant(timestamp)
            last = last if moment is None else moment
            line = {"type": role, "message": {"role": role, "content": as_text(fields.get("text"))}}
            if timestamp is not None:
                line["timestamp"] = timestamp
            if _string(fields.get("id")) is not None:
                line["uuid"] = fields["id"]
            keyed.append(((last, rank, position), json_bytes(line)))
    keyed.sort(key=lambda pair: pair[0])
    return [line for _, line in keyed]


def archive_par(value) -> dict:
    """A PAR from one `lab/par-events` entry (`{timestamp, text, par-id, tags}`), its text kept."""
    fields = value if isinstance(value, dict) else {"text": value}
    text = as_text(fields.get("text"))
    tags = fields.get("tags")
    tags = [tags] if isinstance(tags, str) else [as_text(tag) for tag in tags] if isinstance(tags, list) else []
    par = {"id": _string(fields.get("par-id")), "timestamp": _string(fields.get("timestamp")), "tags": tags,
           "text": text}
    if text.startswith(PAR_HEADER):  # the old lab's rendered PAR: its title is on the first line
        par["title"] = text[len(PAR_HEADER):].split("\n", 1)[0].strip()
    return par


def read_archive(session: ArchiveSession) -> None:
    """Fill `session` from its file (in a thread); every problem is added to `session.problems`."""
    if session.size > MAX_ARCHIVE_BYTES:
        session.problems.append(f"the file is {session.size} bytes, over the read limit of {MAX_ARCHIVE_BYTES} "
                                "bytes: not read")
        return
    try:
        with open(session.path, "rb") as f:
            data = f.read(MAX_ARCHIVE_BYTES + 1)
    except OSError as e:
        session.problems.append(f"cannot be read: {e.strerror or e}")
        return
    if len(data) > MAX_ARCHIVE_BYTES:
        session.problems.append("the file grew over the read limit while being read: not read")
        return
    try:
        archive = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        session.problems.append(f"not valid JSON ({e})")
        return
    if not isinstance(archive, dict):
        session.problems.append("not a JSON object in the archive shape (lab/session-id, lab/user-messages, …)")
        return
    ident = archive.get("lab/session-id")
    if isinstance(ident, str) and 0 < len(ident) <= 1024:
        session.session_id, session.safe_id = ident, safe_id(ident)
    else:
        session.problems.append("no lab/session-id string: listed under its file name")
    meta = session.meta
    meta["session-id"] = session.session_id
    if _string(archive.get("lab/source")):
        meta["source"] = archive["lab/source"]
    if _string(archive.get("lab/repo-root")):
        meta["project"] = meta["cwd"] = archive["lab/repo-root"]
    if _string(archive.get("lab/timestamp-start")):
        meta["created-at"] = archive["lab/timestamp-start"]
    session.pack(message_lines(archive, session.problems))
    pars = archive.get("lab/par-events")
    if pars is not None and not isinstance(pars, list):
        session.problems.append("lab/par-events is not a list")
    elif pars:
        if len(pars) > MAX_MESSAGES:
            session.problems.append(f"lab/par-events: {len(pars) - MAX_MESSAGES} over the limit of {MAX_MESSAGES} "
                                    "left out")
        session.pars = [archive_par(par) for par in pars[:MAX_MESSAGES]]


def scan(folders: list[str], known: dict[str, tuple[int, int]]) -> tuple[list[ArchiveSession], set[str]]:
    """In a thread: (the archives new or changed since `known`, read; every archive path present)."""
    present, changed = set(), []
    for folder in folders:
        real_folder = os.path.realpath(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            try:
                if not entry.is_file() or not os.path.realpath(entry.path).startswith(real_folder + os.sep):
                    continue  # folders, and symlinks out of the folder, are not archives of it
                info = entry.stat()
            except OSError:
                continue
            path = os.path.abspath(entry.path)
            present.add(path)
            stamp = (info.st_mtime_ns, info.st_size)
            if known.get(path) != stamp:
                session = ArchiveSession(path, stamp)
                read_archive(session)
                if session.error:
                    session.meta["error"] = session.error
                changed.append(session)
    return changed, present


class ArchiveSource(service.Service):
    """The archives in the given folders (not recursive), as a catalog source."""

    confined = False  # files found in folders may be symlinks to anywhere: each is checked

    _log = Logger()

    def __init__(self, folders: list[str], clock, run_in_thread=None, interval: float = RESCAN_SECONDS):
        self.folders = [os.path.abspath(os.path.expanduser(folder)) for folder in folders]
        self.clock = clock
        self.interval = interval
        self._run_in_thread = run_in_thread or threads.deferToThread
        self._sessions: dict[str, ArchiveSession] = {}
        self._scanning = False
        self._scanned = False
        self._loop = None

    def startService(self):
        super().startService()
        for folder in self.folders:
            if not os.path.isdir(folder):
                self._log.warn("archive folder {folder} does not exist; its archives will be listed once it is "
                               "created", folder=folder)
        self._loop = task.LoopingCall(self.rescan)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def rescan(self):
        """Look for new, changed and removed archives (in a thread); one look at a time."""
        if self._scanning:
            return None
        self._scanning = True
        known = {path: session.stamp for path, session in self._sessions.items()}
        d = self._run_in_thread(scan, self.folders, known)
        d.addCallback(self._scanned_now)
        d.addErrback(lambda failure: self._log.failure("could not scan the archive folders", failure))
        d.addBoth(self._done)
        return d

    def _done(self, _):
        self._scanning = False

    def _scanned_now(self, result):
        changed, present = result
        sessions = {path: session for path, session in self._sessions.items() if path in present}
        for session in changed:
            sessions[session.path] = session
            if session.error:
                self._log.warn("archive {path} is malformed: {error}; it is listed with this error until the file "
                               "is fixed or removed", path=session.path, error=session.error)
        self._sessions = sessions
        if not self._scanned:
            self._scanned = True
            self._log.info("listing {count} archived sessions from {folders}", count=len(sessions),
                           folders=", ".join(self.folders))

    # -- the catalog's source interface ------------------------------------------

    @property
    def roots(self) -> list[str]:
        return self.folders

    def sessions(self) -> list[ArchiveSession]:
        return list(self._sessions.values())

    def lookup(self, ident: str) -> ArchiveSession | None:
        return find_session(self._sessions.values(), ident)

    def read_lines(self, session: ArchiveSession, start: int, max_lines: int | None = None,
                   max_bytes: int | None = None) -> list[bytes]:
        stop = session.count if max_lines is None else min(session.count, start + max_lines)
        if max_bytes is not None and start < stop:
            limit, size = start + 1, session.line_size(start)
            while limit < stop and size + session.line_size(limit) <= max_bytes:
                size += session.line_size(limit)
                limit += 1
            stop = limit
        return session.lines(start, stop)

    def pars(self, session: ArchiveSession) -> list[dict]:
        return session.pars


def archived_entry(session: ArchiveSession) -> dict:
    """One entry of `GET /fulab/lab/sessions/archived`, in the old lab's shape (plus ids, source, error)."""
    entry = {"id": session.safe_id, "session-id": session.session_id, "path": session.path,
             "modified": now_iso(session.modified), "size-kb": session.size // 1024, "archived": True,
             "source": session.meta["source"]}
    if session.error:
        entry["error"] = session.error
    return entry


class ArchivedListing(resource.Resource):
    """`GET /fulab/lab/sessions/archived`: `{"ok":true,"sessions":[…]}`, newest first (empty without archives)."""

    isLeaf = True

    def __init__(self, source: ArchiveSource | None):
        super().__init__()
        self.source = source

    def render_GET(self, request):
        sessions = self.source.sessions() if self.source is not None else []
        sessions.sort(key=lambda session: session.modified, reverse=True)
        return render_data(request, {"ok": True, "sessions": [archived_entry(session) for session in sessions]})
