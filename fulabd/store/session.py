"""
One stored session's state: where its files are, what is durable, what is in flight.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass

from twisted.internet import defer

from fulabd.store.layout import LINES, META, PARS


@dataclass(frozen=True)
class AppendResult:
    count: int
    appended: int
    dedup: bool


class Session:
    """One session: its files, its durable position, and what is in flight.

    `count`/`size` are durable (what resume and acks report); `written`/
    `written_size` include lines written but not yet synced.
    """

    def __init__(self, root: str, session_id: str, safe: str):
        self.session_id = session_id
        self.safe_id = safe
        self.jsonl_name, self.meta_name, self.par_name = safe + LINES, safe + META, safe + PARS
        self.jsonl_path = os.path.join(root, self.jsonl_name)
        self.meta_path = os.path.join(root, self.meta_name)
        self.par_path = os.path.join(root, self.par_name)
        self.meta: dict = {}
        self.count = 0
        self.size = 0
        self.written = 0
        self.written_size = 0
        self.modified = 0.0
        self.uploaders = 0
        self.stored = False   # its .jsonl exists
        self.fenced: str | None = None  # why appends are refused until a restart recovers the file
        self.pars: list[dict] | None = None  # loaded on first use
        self.par_ids: set[str] = set()
        self.par_count = 0
        self.ends: array | None = None       # end offset of each written line, built on first use
        self.pending_lines: list[bytes] = []  # written, not yet durable (for publishing)
        self.pending_pars: list[tuple[int, dict]] = []
        self.waiters: list[defer.Deferred] = []
        self.sync_lines = False
        self.write_pars = False
        self.meta_due = False
        self.meta_written_at = float("-inf")
        self.meta_dirty = False
        self.meta_writing = False

    @property
    def path(self) -> str:
        return self.jsonl_path

    def describe(self) -> dict:
        return {"session-id": self.session_id, "safe-id": self.safe_id, "count": self.count,
                "size": self.size, "pars": self.par_count}
