"""
Reading stored lines by index, through each session's table of line ends,
always by a descriptor opened without following a symlink. Part of
`SessionStore` (a mixin over its state).
"""

from __future__ import annotations

import os
from array import array

from fulabd.store.interface import StoreError
from fulabd.store.layout import line_ends
from fulabd.store.session import Session


class SessionReading:
    """Lines of a session, durable (`read_lines`) or written (`read_written`)."""

    def _ends(self, session: Session) -> array:
        if session.ends is None:
            session.ends = array("q") if session.written_size == 0 else self._with_reader(
                session, lambda fd: line_ends(fd, session.written_size))
        return session.ends

    def _with_reader(self, session: Session, use):
        """`use(fd)` on a read descriptor of the session's file, opened without following a symlink."""
        try:
            fd = self._root.open(session.jsonl_name, os.O_RDONLY)
        except OSError as e:
            raise StoreError.from_os_error(f"session {session.safe_id}: could not read its file", e) from None
        try:
            return use(fd)
        finally:
            os.close(fd)

    def _read_span(self, session: Session, start: int, stop: int) -> bytes:
        """The bytes of written lines `start` to `stop`, newlines included."""
        ends = self._ends(session)
        stop = min(stop, session.written)
        if start >= stop:
            return b""
        begin = ends[start - 1] if start else 0
        return self._with_reader(session, lambda fd: os.pread(fd, ends[stop - 1] - begin, begin))

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
