"""
One memory budget for the whole daemon: the bytes of upload messages being
received or waiting for their commit, over every connection.

Each frame of a message asks for its length (known from the frame header,
before its payload is read).  A frame that does not fit holds its reader (the
connection stops reading) until enough earlier messages are acknowledged.
Readers are let go in the order their messages began, so none starves; and the
oldest message still being received may go over the limit once nothing is
waiting for a commit, so a message bigger than the budget (or fragmented
messages that fill it between them) still gets through.  A message that grows
once decoded (a packed frame's zstd-compressed lines) asks with its first frame
for the most it may grow to, and gives back the rest once decoded: asking for
its compressed length, 24 connections of 600-byte frames were let in at once
and each inflated to 15 MiB, 345 MiB in flight under a 16 MiB limit.  Memory
therefore stays under the limit plus one message, whatever the number of
connections.
"""

from __future__ import annotations

import itertools
from typing import Protocol


class Reader(Protocol):
    """A connection the budget can stop and restart reading from."""

    def hold(self) -> None:
        """Stop reading (bytes already read stay buffered)."""

    def carry_on(self) -> None:
        """Read again, from a later reactor turn (never delivering a frame from inside this call)."""


class InflightBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.reserved = 0       # bytes of messages being received or awaiting their commit
        self.committing = 0     # of which: complete messages awaiting their commit and ack
        self.holds = 0          # times a reader was held, for the metrics and the log
        self._order = itertools.count()
        self._receiving: dict[Reader, list[int]] = {}  # reader -> [order its message began, bytes granted]
        self._waiting: dict[Reader, int] = {}           # reader -> bytes its next frame asks for

    @property
    def held(self) -> int:
        """Readers held right now."""
        return len(self._waiting)

    def frame(self, reader: Reader, length: int, grows_to: int = 0) -> bool:
        """A frame of `length` bytes begins on `reader`: True if it may be read now, else `reader` is held.

        `grows_to`: the most the message may take once decoded, asked with its first frame (see `decoded`).
        A held reader must deliver no frame until `carry_on` (its bytes stay buffered).
        """
        if reader not in self._receiving:
            self._receiving[reader] = [next(self._order), 0]
            length = max(length, grows_to)
        self._waiting[reader] = length
        self._grant(reader)
        if reader in self._waiting:
            self.holds += 1
            reader.hold()
            return False
        return True

    def message_received(self, reader: Reader) -> int:
        """The message on `reader` is complete: its bytes now wait for the commit. Returns them, for `release`."""
        _, size = self._receiving.pop(reader, (0, 0))
        self.committing += size
        self._grant()
        return size

    def decoded(self, size: int, held: int) -> int:
        """A received message granted `size` bytes holds `held` once decoded: those count until its ack, the
        rest is free now.  Returns them, for `release`."""
        self.committing += held - size
        self.reserved += held - size
        if held < size:
            self._grant()
        return held

    def release(self, size: int):
        """A complete message was answered (or its connection is gone): its bytes are free."""
        self.committing -= size
        self.reserved -= size
        self._grant()

    def forget(self, reader: Reader):
        """`reader`'s connection closed: what it was receiving is dropped."""
        self._waiting.pop(reader, None)
        _, size = self._receiving.pop(reader, (0, 0))
        self.reserved -= size
        self._grant()

    def _grant(self, asking: Reader | None = None):
        """Let waiting frames go, oldest message first, while they fit; readers held before carry on."""
        if not self._waiting:
            return  # (asked after every message and every reply: nearly always nothing waits)
        for reader in sorted(self._waiting, key=lambda each: self._receiving[each][0]):
            wanted = self._waiting[reader]
            if self.reserved + wanted > self.limit and not (self.committing == 0 and self._oldest(reader)):
                return
            del self._waiting[reader]
            self._receiving[reader][1] += wanted
            self.reserved += wanted
            if reader is not asking:
                reader.carry_on()

    def _oldest(self, reader: Reader) -> bool:
        """`reader`'s message began before every other one still being received."""
        return min(order for order, _ in self._receiving.values()) == self._receiving[reader][0]
