"""
In-process fan-out of durable session changes to whoever watches a session.

The store (and the local-source tailer) publish here once lines or PARs are on
disk; viewer protocols subscribe.  No polling of files, no wire format.
"""

from __future__ import annotations

from collections import defaultdict

from twisted.logger import Logger


class Hub:
    """Routes "lines appended" and "PAR added" to the subscribers of one session key.

    A subscriber is any object with `lines_appended(session, first, lines)` and
    `par_added(session, index, par)`; sessions are keyed by their `path`.
    """

    _log = Logger()

    def __init__(self):
        self._subscribers: dict[str, set] = defaultdict(set)
        self.listeners: list = []  # see every session's changes (e.g. the listing's live updates)

    def subscribe(self, key: str, subscriber) -> None:
        self._subscribers[key].add(subscriber)

    def unsubscribe(self, key: str, subscriber) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[key]

    def subscriber_count(self) -> int:
        return sum(len(subscribers) for subscribers in self._subscribers.values())

    def lines_appended(self, session, first: int, lines: list[bytes]) -> None:
        self._deliver(session, "lines_appended", first, lines)

    def par_added(self, session, index: int, par: dict) -> None:
        self._deliver(session, "par_added", index, par)

    def _deliver(self, session, method: str, *args) -> None:
        targets = list(self.listeners) + list(self._subscribers.get(session.path, ()))
        for subscriber in targets:
            try:
                getattr(subscriber, method)(session, *args)
            except Exception:
                self._log.failure("a subscriber of {path} failed on {method}", path=session.path, method=method)
