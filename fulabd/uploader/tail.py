"""
A session file as a sequence of complete lines with byte offsets.

The file on the laptop is the write-ahead log: nothing is kept in memory
beyond the lines of one read.  A partial last line (no newline yet) is held
back until its newline arrives.  A file that shrinks below the read position,
is replaced (another inode), whose first bytes change or whose bytes just
before the read position change (a file rewritten in place, an edited line
making it shorter and new lines making it long again) is reported as
`Replaced`; the caller decides what that means (a new generation).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

from fulabd.uploader.compressed import Decompressed, is_compressed

CHUNK = 1 << 20
FINGERPRINT_BYTES = 4096
TAIL_BYTES = 64  # of the lines read, checked again before reading on


class Replaced(Exception):
    """The file is no longer the one whose lines were read."""


@dataclass
class Position:
    """Line `index` starts at byte `offset`."""

    index: int
    offset: int


class LineReader:
    """Complete lines of `path`, read forward from a position.

    The file is opened for each read, so a reader holds no descriptor while
    idle (thousands of sessions can be watched) and sees a replaced file.
    """

    def __init__(self, path: str):
        self.path = path
        self.compressed = is_compressed(path)  # read decompressed; positions count decompressed bytes
        self._stream: Decompressed | None = None  # a compressed file's, kept open until read to its end
        self.position = Position(0, 0)
        self._inode: tuple[int, int] | None = None
        self._fingerprint: bytes | None = None
        self._tail: bytes | None = None  # the last bytes read, up to the position (uncompressed files)

    def _open(self, check_size: bool = True):
        handle = open(self.path, "rb")
        status = os.fstat(handle.fileno())
        inode = (status.st_dev, status.st_ino)
        try:
            if self._inode is not None and inode != self._inode:
                raise Replaced(f"{self.path} was replaced by another file")
            if check_size and not self.compressed and status.st_size < self.position.offset:
                raise Replaced(f"{self.path} shrank from {self.position.offset} to {status.st_size} bytes")
            self._check_fingerprint(handle)
        except Replaced:
            handle.close()
            raise
        self._inode = inode
        if self.compressed:
            handle.close()
            self._stream = self._stream or Decompressed(self.path)
            return nullcontext(self._stream)
        return handle

    def _check_fingerprint(self, handle):
        """The first bytes of the file must stay what they were when first seen."""
        head = handle.read(FINGERPRINT_BYTES)
        if self._fingerprint is not None and not head.startswith(self._fingerprint):
            raise Replaced(f"{self.path} was rewritten: its first bytes changed")
        self._fingerprint = head

    def bytes_after(self, position: Position) -> int:
        """Bytes on disk past `position` (0 if the file is gone; unknown, so 0, when compressed)."""
        if self.compressed:
            return 0
        try:
            return max(0, os.stat(self.path).st_size - position.offset)
        except OSError:
            return 0

    def seek(self, index: int, known: tuple[Position, ...] = ()) -> bool:
        """Move to the start of line `index`, scanning newlines from the best known position.

        Returns False (and stays put) when the file has fewer than `index`
        complete lines.  Memory stays bounded: the scan reads in chunks.
        """
        start = max((p for p in (Position(0, 0), *known) if p.index <= index), key=lambda p: p.index)
        with self._open(check_size=False) as handle:
            line, offset = start.index, start.offset
            handle.seek(offset)
            while line < index:
                chunk = handle.read(CHUNK)
                if not chunk:
                    return False
                at = 0
                while line < index:
                    found = chunk.find(b"\n", at)
                    if found < 0:
                        break
                    line += 1
                    at = found + 1
                offset += at if line == index else len(chunk)
        self.position = Position(index, offset)
        self._tail = None
        return True

    def read(self, max_bytes: int) -> list[bytes]:
        """Complete lines from the position, up to `max_bytes` (at least one line, however long).

        The lines are cut from one read with one split (a loop over lines in Python cost the uploader a sixth
        of its time on a 100 MB backfill).
        """
        with self._open() as handle:
            self._check_tail(handle)
            data = handle.read(max_bytes)  # a damaged compressed file: what precedes the damage, or Unreadable
            taken = data.rfind(b"\n") + 1
            if not taken:  # the first line is longer than max_bytes (or incomplete): read on to its end
                data = bytearray(data)
                while not taken and (chunk := handle.read(CHUNK)):
                    searched = len(data)
                    data += chunk
                    taken = data.find(b"\n", searched) + 1
            if not taken or taken == len(data) < max_bytes:
                self._close_stream()  # read to the end: a compressed file keeps no descriptor
        lines = bytes(memoryview(data)[:taken - 1]).split(b"\n") if taken else []
        self.position = Position(self.position.index + len(lines), self.position.offset + taken)
        if taken and not self.compressed:
            last = bytes(memoryview(data)[max(0, taken - TAIL_BYTES):taken])
            self._tail = ((self._tail or b"") + last)[-TAIL_BYTES:]
        return lines

    def _check_tail(self, handle):
        """Leave `handle` at the position, once the bytes before it are still the ones read (the first read
        after a `seek` takes them as they are)."""
        offset = self.position.offset
        if self.compressed or offset == 0:
            handle.seek(offset)
            return
        size = min(TAIL_BYTES, offset)
        handle.seek(offset - size)
        tail = handle.read(size)
        if self._tail is not None and tail != self._tail[-size:]:
            raise Replaced(f"{self.path} was rewritten: the lines before byte {offset} changed")
        self._tail = tail

    def _close_stream(self):
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def reset(self):
        """Forget the file: the next read starts at line 0 of whatever is at the path now."""
        self._close_stream()
        self.position = Position(0, 0)
        self._inode = None
        self._fingerprint = None
        self._tail = None
