"""
The listing index: stored sessions in the order they last changed, each change
numbered, so that a page of the listing and "what changed since token T" cost
the size of the answer, not the number of sessions, and touch no file.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class ChangeIndex:
    """Sessions by last change. `token` is the number of the latest change."""

    def __init__(self):
        self.token = 0
        self._seqs: list[int] = []       # ascending change numbers; an entry is stale once its session changed again
        self._sessions: list = []
        self._latest: dict = {}          # session -> its latest change number

    def __len__(self) -> int:
        return len(self._latest)

    def touch(self, session) -> None:
        """`session` changed (or is new): it moves to the front of the listing."""
        self.token += 1
        self._latest[session] = self.token
        self._seqs.append(self.token)
        self._sessions.append(session)
        if len(self._seqs) > 2 * len(self._latest) + 1024:
            self._compact()

    def _compact(self) -> None:
        live = [(seq, session) for seq, session in zip(self._seqs, self._sessions) if self._latest[session] == seq]
        self._seqs = [seq for seq, _ in live]
        self._sessions = [session for _, session in live]

    def page(self, limit: int, before: int | None = None) -> tuple[list, int | None]:
        """Up to `limit` sessions, latest change first, that last changed before change number `before`;
        and the cursor of the next page (None at the end; the last page may come back empty)."""
        position = len(self._seqs) if before is None else bisect_left(self._seqs, before)
        found = []
        while position > 0 and len(found) < limit:
            position -= 1
            session = self._sessions[position]
            if self._latest[session] == self._seqs[position]:
                found.append(session)
        return found, (self._seqs[position] if found and position > 0 else None)

    def since(self, token: int) -> list:
        """Every session changed after change number `token`, latest change first."""
        start = bisect_right(self._seqs, token)
        return [session for seq, session in zip(reversed(self._seqs[start:]), reversed(self._sessions[start:]))
                if self._latest[session] == seq]
