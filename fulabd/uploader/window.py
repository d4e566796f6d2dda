"""
The connection's window: how much of all sessions' uploads may be in flight at
once, and who waits for room.  Shared by every `Sender` on one connection.
"""

from __future__ import annotations

from collections import deque


class Budget:
    """Bytes and messages in flight, shared by all sessions, and the server's message size limit once it
    told us (it then closes the connection)."""

    def __init__(self, max_bytes: int = 8 << 20, max_batches: int = 64):
        self.max_bytes = max_bytes
        self.max_batches = max_batches
        self.bytes = 0
        self.batches = 0
        self.server_limit: int | None = None
        self._waiting: deque = deque()  # senders, each pumped once there is room

    def available(self) -> bool:
        return self.bytes < self.max_bytes and self.batches < self.max_batches

    def take(self, size: int):
        self.bytes += size
        self.batches += 1

    def release(self, size: int):
        self.bytes -= size
        self.batches -= 1
        while self._waiting and self.available():
            self._waiting.popleft().pump()

    def wait(self, sender):
        if sender not in self._waiting:
            self._waiting.append(sender)

    def reset(self):
        self.bytes = self.batches = 0
        self._waiting.clear()
