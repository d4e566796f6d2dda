"""
Start-up: what is on disk becomes the store's sessions.

A session's meta records its line count and byte size (`:event-count`,
`:jsonl-bytes`) and its PAR sidecar's count and size (`:par-count`,
`:par-bytes`), as they were durable when the meta was written. When the file
still has that size and ends with a newline, the count is taken as is (no
re-reading of the file, no parsing of the sidecar); otherwise (a crash, a
hand edit) the file's torn tail is cut and its lines are counted.
Runs in a thread: it touches nothing but the files and the sessions it makes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fulabd import edn
from fulabd.store.layout import LINES, Root, count_lines, cut_torn_tail, ends_with_newline, safe_id
from fulabd.store.session import Session


@dataclass
class Loaded:
    sessions: list[Session] = field(default_factory=list)
    notes: list[tuple[str, str, dict]] = field(default_factory=list)  # (level, format, fields) for the log

    def note(self, level: str, text: str, **fields):
        self.notes.append((level, text, fields))


def load_root(root: Root, now: float, loaded: Loaded | None = None) -> Loaded:
    """Every session file in the root; symlinks and other non-files are logged and left alone.

    `loaded` is filled in as the load goes (so that its progress can be read meanwhile).
    """
    loaded = loaded if loaded is not None else Loaded()
    for entry in root.entries():
        if not entry.name.endswith(LINES):
            continue
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            loaded.note("warn", "{name} in the store is not a regular file (a symlink?); it is left alone, "
                                "neither listed nor written: remove it or replace it with the file itself",
                        name=entry.name)
            continue
        safe = entry.name[:-len(LINES)]
        session = Session(root.path, safe, safe)
        session.stored = True
        try:
            recover(root, session, now, loaded)
        except OSError as e:
            loaded.note("error", "could not read {name} ({error}); it is not served until a restart reads it",
                        name=entry.name, error=e)
            continue
        loaded.sessions.append(session)
    return loaded


def recover(root: Root, session: Session, now: float, loaded: Loaded) -> None:
    session.meta = read_sidecar(root, session.meta_name, dict, now, loaded.note) or {}
    meta = session.meta
    raw = meta.get("session-id")
    if isinstance(raw, str) and safe_id(raw) == session.safe_id:
        session.session_id = raw
    else:
        meta.pop("session-id", None)
    fd = root.open(session.jsonl_name, os.O_RDWR)
    try:
        info = os.fstat(fd)
        session.modified = info.st_mtime
        if meta.get("jsonl-bytes") == info.st_size and isinstance(meta.get("event-count"), int) \
                and ends_with_newline(fd, info.st_size):
            session.count = meta["event-count"]
        else:
            cut = cut_torn_tail(fd)
            if cut:
                loaded.note("warn", "session {safe_id}: cut a torn last line of {bytes} bytes left by a crash",
                            safe_id=session.safe_id, bytes=cut)
            session.count = count_lines(fd)
        session.size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    session.written, session.written_size = session.count, session.size
    session.par_count = par_count(root, session, now, loaded)
    recorded = {"event-count": session.count, "jsonl-bytes": session.size, "par-count": session.par_count}
    if any(meta.get(key) != value for key, value in recorded.items()):
        meta.update(recorded)
        session.meta_dirty = "session-id" in meta
    for leftover in (session.meta_name + ".tmp", session.par_name + ".tmp"):
        if root.exists(leftover):
            root.remove(leftover)


def par_count(root: Root, session: Session, now: float, loaded: Loaded) -> int:
    """The PARs in the sidecar: the meta's count while the sidecar has the size the meta says, else counted."""
    try:
        size = os.stat(session.par_name, dir_fd=root.fd, follow_symlinks=False).st_size
    except FileNotFoundError:
        size = None
    meta = session.meta
    if size is None:
        return 0
    if size == meta.get("par-bytes") and isinstance(meta.get("par-count"), int):
        return meta["par-count"]
    pars = read_sidecar(root, session.par_name, list, now, loaded.note)
    if pars is None:
        meta.pop("par-bytes", None)
        return 0
    meta["par-bytes"] = size
    session.meta_dirty = "session-id" in meta
    return len(pars)


def read_sidecar(root: Root, name: str, kind: type, now: float, note):
    """An EDN sidecar, or None; an unreadable one is set aside, never overwritten.

    `note(level, format, **fields)` is told what was set aside.
    """
    try:
        data = root.read(name)
        if data is None:
            return None
        value = edn.loads(data)
    except OSError as e:
        note("error", "could not read {name} ({error}); it is left as it is", name=name, error=e)
        return None
    except Exception as e:
        aside = f"{name}.unreadable-{int(now)}"
        root.rename(name, aside)
        note("error", "could not read {name} ({error}); moved it to {aside} and started afresh",
             name=name, error=e, aside=aside)
        return None
    if kind is list and isinstance(value, dict):
        value = [value]
    return value if isinstance(value, kind) else None
