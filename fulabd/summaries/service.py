"""
Every session's summary, kept up to date as lines arrive.

A hub listener: each durable line is folded into its session's summary in the
reactor (a few dictionary updates per line), a turn after the hub hands it
over, so that summaries never delay an ack.  A session seen for the first
time with lines already on disk (at start-up, a local file, a daemon restart)
is caught up from its file, one session at a time: a thread reads it a slice at
a time and each slice is folded in the reactor, a slice per turn, so that a
100 MB session takes turns with the acks instead of holding the interpreter
lock against them from a thread (which, while a 300 MB store was caught up,
made a live upload's ack p99 2.4 times longer); lines that arrive meanwhile
wait and are folded in after it.
"""

from __future__ import annotations

from collections import deque
from pathlib import PurePath

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger

from fulabd import formats
from fulabd.formats.common import TOKEN_KINDS
from fulabd.summaries.accumulator import Accumulator

LIVE_SECONDS = 60.0  # a session is "live" while it got a line this recently
SLICE_BYTES = 256 << 10  # of lines folded in per reactor turn (about 3 ms), arrived or read from a file
TRACK_SLICE = 500  # sessions found at start-up taken up per reactor turn (about 1.3 ms of it)
LISTED_LEAVES_OUT = ("files-touched",)  # long lists stay on /sessions/<id>


def agent_of(session) -> formats.AgentFormat | None:
    source = session.meta.get("source")
    return formats.BY_NAME.get(source) if isinstance(source, str) else None


def read_slice(path: str, offset: int, size: int) -> bytes:
    """In a thread: `size` bytes of a session file from `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


class _Tracked:
    """What the service holds for one session."""

    def __init__(self, session):
        self.session = session
        self.accumulator: Accumulator | None = None  # None while catching up from the file
        self.waiting: list[tuple[int, list[bytes]]] = []  # live lines that arrived while catching up
        self.last_line_at: float | None = None
        self.queued = False  # waiting in Summaries._queue (a flag: `in` on the queue costs O(sessions))


class Summaries(service.Service):
    """The `SessionSummaries` of every session the catalog serves."""

    _log = Logger()

    def __init__(self, catalog, prices, clock, run_in_thread=None, live_seconds: float = LIVE_SECONDS,
                 ready=lambda: defer.succeed(None)):
        """`catalog` has `sessions()` and `by_id(ident) -> (session, source) | None`; `ready()` fires once
        the catalog knows the sessions found at start-up (the store loads them in a thread)."""
        self.catalog = catalog
        self.prices = prices
        self.clock = clock
        self.live_seconds = live_seconds
        self.ready = ready
        self._run_in_thread = run_in_thread or threads.deferToThread
        self._tracked: dict[str, _Tracked] = {}  # by session file path
        self._ids: dict[str, str] = {}           # session id and listing id -> path
        self._children: dict[str, set[str]] = {}  # parent session id -> sub-agent session paths
        self._queue: deque[_Tracked] = deque()  # sessions waiting to be caught up from their files
        self._backlog: deque[tuple[_Tracked, int, list[bytes]]] = deque()  # arrived lines not yet folded in
        self._draining = None
        self._catching_up = False
        self._started_at: float | None = None  # set until the sessions found at start-up are caught up
        self._untracked: deque = deque()  # sessions found at start-up not yet taken up
        self._read = 0  # files read since the queue was last empty

    def startService(self):
        super().startService()
        self.ready().addCallback(lambda _: self.clock.callLater(0, self._track_all)).addErrback(
            lambda failure: self._log.failure("summaries cannot start", failure))

    def _track_all(self):
        self._started_at = self.clock.seconds()
        self._untracked = deque(self.catalog.sessions())
        self._track_some()

    def _track_some(self):
        """Take up TRACK_SLICE more of the sessions found at start-up, and the rest on later reactor turns
        (100,000 in one turn held the reactor, and the first listing, for 0.27 s)."""
        for _ in range(min(TRACK_SLICE, len(self._untracked))):
            self._tracked_for(self._untracked.popleft())
        if self._untracked:
            self.clock.callLater(0, self._track_some)
        self._next()

    # -- the hub's listener interface --------------------------------------------

    def lines_appended(self, session, first: int, lines: list[bytes]) -> None:
        """Noted now, folded in on a later reactor turn: the hub calls this before the lines' acks go out."""
        tracked = self._tracked_for(session, fresh_from=first)
        tracked.last_line_at = self.clock.seconds()
        self._backlog.append((tracked, first, lines))
        if self._draining is None:
            self._draining = self.clock.callLater(0, self._drain)

    def _drain(self) -> None:
        """Fold in arrived lines, at most SLICE_BYTES of them per reactor turn."""
        self._draining = None
        budget = SLICE_BYTES
        while self._backlog and budget > 0:
            tracked, first, lines = self._backlog.popleft()
            taken = 0
            while taken < len(lines) and budget > 0:
                budget -= len(lines[taken])
                taken += 1
            if taken < len(lines):
                self._backlog.appendleft((tracked, first + taken, lines[taken:]))
            if tracked.accumulator is None:
                tracked.waiting.append((first, lines[:taken]))
                continue
            self._fold_or_log(tracked, first, lines[:taken])
        if self._backlog:
            self._draining = self.clock.callLater(0, self._drain)

    def par_added(self, session, index: int, par: dict) -> None:
        pass

    # -- SessionSummaries ----------------------------------------------------------

    def get(self, session_id: str) -> dict | None:
        """The summary of a session by its id or listing id; None if unknown or still being caught up."""
        path = self._ids.get(session_id)
        if path is None:
            found = self.catalog.by_id(session_id)
            if found is None:
                return None
            path = self._tracked_for(found[0]).session.path
        return self._summary(self._tracked[path])

    def of(self, session) -> dict | None:
        """The summary of a session object (caught up first if it is new here)."""
        return self._summary(self._tracked_for(session))

    def listing_fields(self, session, now: float) -> dict:
        """What a listing entry shows of the summary: `summary` (or None while it is computed), `live`, and
        `live-for`, the seconds it stays live without another line (so a client that is sent only changes
        can let it lapse)."""
        tracked = self._tracked_for(session)
        summary = self._summary(tracked)
        if summary is not None:
            summary = {key: value for key, value in summary.items() if key not in LISTED_LEAVES_OUT}
        left = 0 if tracked.last_line_at is None else max(0, tracked.last_line_at + self.live_seconds - now)
        return {"summary": summary, "live": left > 0, "live-for": round(left, 1)}

    # -- keeping up ------------------------------------------------------------------

    def _tracked_for(self, session, fresh_from: int | None = None) -> _Tracked:
        """The tracked state of `session`, created (and caught up, if it has lines) when new here."""
        tracked = self._tracked.get(session.path)
        if tracked is not None and tracked.session is not session:
            tracked.session = session  # a local file indexed afresh (it was rewritten): read it again
            tracked.waiting = []
            self._remember(session)
            self._catch_up(tracked)
        if tracked is None:
            tracked = self._tracked[session.path] = _Tracked(session)
            self._remember(session)
            if fresh_from == 0 or (fresh_from is None and session.count == 0):
                tracked.accumulator = Accumulator(agent_of(session))
            else:
                self._catch_up(tracked)
        return tracked

    def _remember(self, session) -> None:
        for ident in (session.session_id, session.safe_id):
            if ident:
                self._ids[ident] = session.path
        parent = session.meta.get("parent-session-id")
        if isinstance(parent, str):
            self._children.setdefault(parent, set()).add(session.path)

    def _fold_or_log(self, tracked: _Tracked, first: int, lines: list[bytes]) -> None:
        """Fold in lines; a failure loses only these, and says so."""
        try:
            self._fold(tracked, first, lines)
        except Exception:
            self._log.failure("could not summarize lines {first}+ of {path}; its summary may miss them",
                              first=first, path=tracked.session.path)

    def _fold(self, tracked: _Tracked, first: int, lines: list[bytes]) -> None:
        accumulator = tracked.accumulator
        if first > accumulator.lines:
            self._log.warn("summary of {path}: lines from {first} arrived after line {lines}; reading it afresh",
                           path=tracked.session.path, first=first, lines=accumulator.lines)
            self._catch_up(tracked)
            return
        if accumulator.agent is None and first == 0:
            accumulator.agent = agent_of(tracked.session) or formats.detect(
                PurePath(tracked.session.path), formats.head_lines(b"\n".join(lines) + b"\n"))
        for raw in lines[accumulator.lines - first:]:
            accumulator.add(raw)

    def _catch_up(self, tracked: _Tracked) -> None:
        tracked.accumulator = None
        if not tracked.queued:
            tracked.queued = True
            self._queue.append(tracked)
        self._next()

    def _next(self) -> None:
        if self._catching_up:
            return
        if not self._queue:
            if self._untracked:
                return  # _track_some calls again
            if self._started_at is not None:
                if self._tracked:  # an empty store has nothing to say
                    self._log.info("summaries of {count} sessions are up to date ({seconds:.1f} s after start-up)",
                                   count=len(self._tracked), seconds=self.clock.seconds() - self._started_at)
                self._started_at = None
            elif self._read:
                self._log.info("read the summaries of {count} more sessions from their files", count=self._read)
            self._read = 0
            return
        tracked = self._queue.popleft()
        tracked.queued = False
        self._catching_up = True
        self._read += 1
        session = tracked.session
        self._read_on(tracked, session, Accumulator(agent_of(session)), session.count, 0, b"")

    def _read_on(self, tracked: _Tracked, session, accumulator: Accumulator, lines: int, offset: int,
                 rest: bytes) -> None:
        """Catch up with the file's first `lines` lines from `offset` (`rest`: a line begun before it)."""
        # A line longer than a slice: read as much again as is pending, so joining its pieces stays linear.
        # The first slice of a file of an unknown agent is what `formats.detect` needs to tell whose it is.
        size = max(SLICE_BYTES, len(rest), formats.HEAD_BYTES if offset == 0 and accumulator.agent is None else 0)
        self._run_in_thread(read_slice, session.path, offset, size).addCallback(
            self._fold_slice, tracked, session, accumulator, lines, offset, rest).addErrback(
            self._caught_up, tracked, session)

    def _fold_slice(self, data: bytes, tracked: _Tracked, session, accumulator: Accumulator, lines: int,
                    offset: int, rest: bytes) -> None:
        if accumulator.agent is None and offset == 0:
            accumulator.agent = formats.detect(PurePath(session.path), formats.head_lines(data))
        complete = (rest + data).split(b"\n")
        rest = complete.pop()  # a line not ended yet (if the file ends there, not a line yet)
        for raw in complete[:max(0, lines - accumulator.lines)]:
            accumulator.add(raw)
        if not data or accumulator.lines >= lines:
            self._caught_up(accumulator, tracked, session)
        else:
            self.clock.callLater(0, self._read_on, tracked, session, accumulator, lines, offset + len(data), rest)

    def _caught_up(self, result, tracked: _Tracked, session) -> None:
        self._catching_up = False
        if isinstance(result, Accumulator):
            if tracked.session is session and tracked.accumulator is None and not tracked.queued:
                tracked.accumulator = result
                waiting, tracked.waiting = tracked.waiting, []
                for first, lines in waiting:
                    if tracked.accumulator is None:  # a gap sent it back to its file: these wait again
                        tracked.waiting.append((first, lines))
                        continue
                    self._fold_or_log(tracked, first, lines)
        elif result.check(FileNotFoundError):
            self._forget(tracked)
        else:
            self._log.failure("could not summarize {path}", result, path=session.path)
        self._next()

    def _forget(self, tracked: _Tracked) -> None:
        self._tracked.pop(tracked.session.path, None)
        for ident in (tracked.session.session_id, tracked.session.safe_id):
            if self._ids.get(ident) == tracked.session.path:
                del self._ids[ident]

    # -- rendering ---------------------------------------------------------------------

    def _summary(self, tracked: _Tracked) -> dict | None:
        if tracked.accumulator is None:
            return None
        session = tracked.session
        summary = {"session-id": session.session_id, "id": session.safe_id, "source": session.meta.get("source"),
                   "project": session.meta.get("project")}
        if session.meta.get("parent-session-id") is not None:
            summary["parent-session-id"] = session.meta["parent-session-id"]
        summary |= tracked.accumulator.summary(self.prices)
        children = self._children.get(session.session_id, set())
        summary["subagents"] = sorted(set(summary["subagents"]) | {
            self._tracked[path].session.session_id for path in children if path in self._tracked})
        summary["tokens-with-subagents"] = self._tokens_with_subagents(tracked, set())
        return summary

    def _tokens_with_subagents(self, tracked: _Tracked, seen: set) -> dict:
        seen.add(tracked.session.path)
        total = tracked.accumulator.tokens() if tracked.accumulator is not None else dict.fromkeys(TOKEN_KINDS, 0)
        for path in self._children.get(tracked.session.session_id, ()):
            child = self._tracked.get(path)
            if child is not None and path not in seen:
                for kind, value in self._tokens_with_subagents(child, seen).items():
                    total[kind] += value
        return total
