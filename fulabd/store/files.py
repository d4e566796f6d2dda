"""
The sessions' append descriptors, bounded: at most `limit` are open, the least
recently used is closed to make room and reopened on demand, so the number of
sessions never turns into the number of open files.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

from twisted.logger import Logger

from fulabd.store.interface import StoreError
from fulabd.store.layout import Root
from fulabd.store.session import Session

DEFAULT_MAX_OPEN_FILES = 256
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class OpenFiles:
    """An LRU of append descriptors. A pinned descriptor (being synced) is not closed until unpinned."""

    _log = Logger()

    def __init__(self, root: Root, clock, limit: int = DEFAULT_MAX_OPEN_FILES):
        self.root = root
        self.clock = clock
        self.limit = max(1, limit)
        self._fds: OrderedDict[Session, int] = OrderedDict()  # least recently used first
        self._used_at: dict[Session, float] = {}
        self._pinned: dict[Session, int] = {}
        self._close_when_unpinned: set[Session] = set()

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, session: Session) -> int:
        """The session's append descriptor, opening (and creating) its file when needed."""
        self._used_at[session] = self.clock.seconds()
        fd = self._fds.get(session)
        if fd is not None:
            self._fds.move_to_end(session)
            return fd
        self._make_room(self.limit - 1)
        fd = self._open(session)
        self._fds[session] = fd
        self._close_when_unpinned.discard(session)
        session.stored = True
        return fd

    def _open(self, session: Session) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            return self.root.open(session.jsonl_name, flags)
        except OSError as e:
            if e.errno in OUT_OF_DESCRIPTORS and self._make_room(0):
                try:
                    return self.root.open(session.jsonl_name, flags)
                except OSError as again:
                    e = again
            raise StoreError.from_os_error(f"session {session.safe_id}: could not open its file", e) from None

    def _make_room(self, keep: int) -> bool:
        """Close unpinned descriptors, least recently used first, until at most `keep` are open."""
        closed = False
        for session in list(self._fds):
            if len(self._fds) <= keep:
                break
            if session not in self._pinned:
                self._forget(session)
                closed = True
        return closed

    def _forget(self, session: Session) -> None:
        os.close(self._fds.pop(session))
        del self._used_at[session]

    def pin(self, session: Session) -> int:
        """The session's descriptor (reopened if it was closed to make room), kept open until `unpin`.

        Syncing any descriptor of the file makes all its written data durable, so a reopened one will do.
        """
        fd = self.get(session)
        self._pinned[session] = self._pinned.get(session, 0) + 1
        return fd

    def unpin(self, session: Session) -> None:
        left = self._pinned.get(session, 0) - 1
        if left > 0:
            self._pinned[session] = left
            return
        self._pinned.pop(session, None)
        if session in self._close_when_unpinned:
            self._close_when_unpinned.discard(session)
            self.close(session)

    def close(self, session: Session) -> None:
        """Close the session's descriptor (after its sync, if one is running)."""
        if session in self._pinned:
            self._close_when_unpinned.add(session)
            return
        if session in self._fds:
            self._forget(session)

    def close_idle(self, idle_seconds: float, busy) -> None:
        """Close the descriptors unused for `idle_seconds` whose session `busy(session)` says is not in use."""
        now = self.clock.seconds()
        for session in list(self._fds):
            if now - self._used_at[session] < idle_seconds:
                break
            if session not in self._pinned and not busy(session):
                self._forget(session)

    def close_all(self) -> None:
        for session in list(self._fds):
            self._forget(session)
        self._pinned.clear()
        self._close_when_unpinned.clear()

