"""
Every session the daemon serves, from the store and from local source folders,
and the only way a viewer's `?path=` or `?session=` becomes a session.

A session is served only when its file, symlinks resolved, lies inside its
source's folder: a symlink in the store pointing elsewhere is neither listed
nor streamed, and no other file on the server can be named.  Reads open the
file first and check the file they opened (`open_inside`), so a symlink
swapped in after the check serves nothing.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol


class SessionSource(Protocol):
    """What the catalog, the listings and the viewer ask of a source of sessions.

    A session is any object with `path`, `session_id`, `safe_id`, `meta` (a dict), `count` (lines),
    `size` (bytes), `modified` (epoch seconds), `par_count`, `uploaders` and `stored`.
    """

    confined: bool
    """True when its sessions' files cannot lie outside its roots (the store creates them itself, relative to
    its root and never through a symlink): the catalog then need not check each one by its real path."""

    @property
    def roots(self) -> list[str]:
        """The folders its sessions' files lie in; a session outside them is never served."""

    def sessions(self) -> list: ...

    def lookup(self, ident: str):
        """The session with this safe id or session id, or None."""

    def read_lines(self, session, start: int, max_lines: int | None = None,
                   max_bytes: int | None = None) -> list[bytes]:
        """Lines from `start` (at most `max_lines`; past the first, at most `max_bytes`), without newlines."""

    def pars(self, session) -> list[dict]: ...


class StoreSource:
    """The session store seen as a source of sessions for listings and viewers."""

    confined = True

    def __init__(self, store):
        self.store = store

    @property
    def roots(self) -> list[str]:
        return [self.store.root]

    def sessions(self) -> list:
        return self.store.sessions()

    def lookup(self, ident: str):
        session = self.store.by_safe_id(ident) or self.store.get(ident)
        return session if session is not None and session.stored else None

    def read_lines(self, session, start: int, max_lines: int | None = None, max_bytes: int | None = None):
        return self.store.read_lines(session, start, max_lines, max_bytes)

    def pars(self, session) -> list[dict]:
        return self.store.pars(session)


def find_session(sessions, ident: str):
    """The session of `sessions` whose safe id or session id is `ident`, or None (for sources that keep no index
    by id: a scan)."""
    return next((session for session in sessions if ident in (session.safe_id, session.session_id)), None)


def inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


class NotInside(OSError):
    """The file opened under a served name lies outside its source's folders (a symlink swapped in)."""


def opened_path(f) -> str:
    """Where the file open as `f` really is (not where its name points now)."""
    try:
        return os.readlink(f"/proc/self/fd/{f.fileno()}")
    except OSError:  # no /proc: the name's target, if it is still the same file as the one open
        real = os.path.realpath(f.name)
        opened, named = os.fstat(f.fileno()), os.stat(real)
        return real if (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino) else ""


def open_inside(path: str, roots) -> BinaryIO:
    """Open `path` for reading, then check that the file opened lies inside one of `roots`.

    Checking the name first and opening it after would serve whatever a swap put there in between:
    the bytes read come from the file that was checked, or nothing is read.
    """
    f = open(path, "rb")
    real = opened_path(f)
    if not any(inside(real, os.path.realpath(root)) for root in roots):
        f.close()
        raise NotInside(f"{path} opens a file outside {', '.join(roots)}")
    return f


class Catalog:
    """The sources in lookup order (the store first)."""

    def __init__(self, sources: list[SessionSource]):
        self.sources = sources

    def _served(self, source, session) -> bool:
        if source.confined:
            return True
        real = os.path.realpath(session.path)
        return any(inside(real, os.path.realpath(root)) for root in source.roots)

    def sessions(self) -> list:
        """Every served session, for the listings."""
        return [session for source in self.sources for session in source.sessions() if self._served(source, session)]

    def by_path(self, requested: str):
        """(session, source) for a listed `path`, or None: the same None whatever is on disk there."""
        if "\0" in requested:  # no file is named so (and `realpath` would raise)
            return None
        wanted = os.path.realpath(requested)
        for source in self.sources:
            if not any(inside(wanted, os.path.realpath(root)) for root in source.roots):
                continue
            for session in source.sessions():
                if os.path.realpath(session.path) == wanted and self._served(source, session):
                    return session, source
        return None

    def by_id(self, ident: str):
        """(session, source) for a session id or safe id, or None."""
        for source in self.sources:
            session = source.lookup(ident)
            if session is not None and self._served(source, session):
                return session, source
        return None
