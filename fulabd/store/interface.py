"""
What the store offers its callers (upload, PARs over HTTP, listings, viewers,
health), so that a second backend knows what to implement.
"""

from __future__ import annotations

import errno
from typing import Protocol

from twisted.internet import defer

from fulabd.messages import STORAGE_FAILED, STORAGE_FULL, ProtocolError
from fulabd.store.index import ChangeIndex


class StoreError(ProtocolError):
    """The store could not do what was asked; `code` is `storage-failed` or `storage-full`."""

    @classmethod
    def from_os_error(cls, what: str, error: OSError) -> "StoreError":
        code = STORAGE_FULL if error.errno in (errno.ENOSPC, errno.EDQUOT) else STORAGE_FAILED
        reason = error.strerror or type(error).__name__
        if error.errno == errno.ELOOP:
            reason = "it is a symlink, which the store never follows"
        return cls(code, f"the server could not store this: {what} ({reason}); nothing was stored, "
                         "retry later or ask the operator to check the server's log", reason=reason)


class StoredSession(Protocol):
    """What callers read of a session (they never change it)."""

    session_id: str
    safe_id: str
    path: str
    meta: dict
    count: int
    size: int
    modified: float
    par_count: int
    uploaders: int
    stored: bool


class Store(Protocol):
    """A durable, deduplicating session store.

    Every Deferred fires once what was asked is durable, or fails with a
    `ProtocolError` (`gap`, `conflict`, `bad-par`, `unknown-session`,
    `storage-failed`, `storage-full`); nothing else escapes.
    """

    root: str
    index: ChangeIndex  # the listings' pages and changes, kept up to date by the store

    def sessions(self) -> list[StoredSession]:
        """Every session that has files, in no particular order."""

    def loaded(self) -> defer.Deferred:
        """Fires once the sessions on disk at start-up are known (at once when they are)."""

    def get(self, session_id: str) -> StoredSession | None:
        """The stored session with this raw id."""

    def by_safe_id(self, safe: str) -> StoredSession | None:
        """The stored session whose listing `id` this is."""

    def resume(self, session_id: str) -> defer.Deferred:
        """Fires with the durable line count (0 for a session never stored)."""

    def append(self, session_id: str, seq: int | None, lines: list[bytes], meta: dict | None = None) -> defer.Deferred:
        """Store lines `seq`, `seq+1`, … (resent ones checked and skipped); fires with an `AppendResult`."""

    def add_par(self, session_id: str, par: dict, author: str | None = None) -> defer.Deferred:
        """Check and store a PAR of a session that has lines; fires with (index, par, added)."""

    def update_meta(self, session_id: str, **values) -> None:
        """Record extra metadata of a stored session (e.g. its uploader) with the next commit."""

    def attach(self, session_id: str) -> None:
        """An upload connection is sending to this session (it shows as `uploading`)."""

    def detach(self, session_id: str) -> None:
        """That connection has gone."""

    def pars(self, session: StoredSession) -> list[dict]:
        """The session's PARs, in the order they were stored."""

    def read_lines(self, session: StoredSession, start: int, max_lines: int | None = None,
                   max_bytes: int | None = None) -> list[bytes]:
        """Durable lines from `start`: at most `max_lines`, and past the first, at most `max_bytes`."""

    def problem(self) -> str | None:
        """None while the store takes work, else why not (for `/healthz`)."""
