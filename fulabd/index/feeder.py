"""
Keeping the search index up to date, never on the ack path.

The index is written by a worker process (`fulabd.index.worker`) that reads the
session files itself.  The feeder, a hub listener (`Hub.listeners`), only tells
it which sessions changed: at most every FLUSH_SECONDS, a line per changed
session however many lines it got, so that the reactor's share of indexing is
a dictionary update per ack and no line is copied across.  A sweep every
SWEEP_SECONDS compares every session with what the worker was told: it finds
local files that grew or were rewritten, and sessions that are gone.  A worker
that dies is logged and started again, and told everything again; meanwhile
searches answer from the index as it stands, with `caught-up` false.
"""

from __future__ import annotations

import os
import sys

import orjson
from twisted.application import service
from twisted.internet import defer, error, protocol, task
from twisted.logger import Logger, LogLevel

import fulabd

FLUSH_SECONDS = 0.1       # between the reactor's reports of changed sessions
SWEEP_SECONDS = 10.0      # how often every session is compared with what the worker was told
RESTART_SECONDS = 1.0     # before a dead worker is started again, doubling up to MAX_RESTART_SECONDS
MAX_RESTART_SECONDS = 60.0
STOP_SECONDS = 10.0       # a worker still running this long after its input ended is killed


def session_news(session) -> dict:
    """What the worker is told of a session: who it is and how much of it is durable."""
    meta = session.meta
    project = meta.get("project") or meta.get("cwd")
    return {"op": "session", "key": session.path, "session-id": session.session_id, "listing-id": session.safe_id,
            "source": meta.get("source"), "project": project if isinstance(project, str) else None,
            "lines": session.count, "bytes": session.size, "pars": session.par_count}


WORKER = ("import sys; sys.path[:0] = [p for p in sys.argv[1:2] if p not in sys.path]; "
          "from fulabd.index.worker import main; sys.exit(main(sys.argv[2:]))")


def durable_state(session) -> tuple[int, int, int]:
    """What the worker's news says of a session's size: lines, bytes and PARs."""
    return session.count, session.size, session.par_count


def spawn_worker(reactor, folder: str, process: protocol.ProcessProtocol) -> None:
    """Start the index worker with this daemon's Python and this daemon's fulabd (found where this one was,
    ahead of the rest only if it is not on the path already)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fulabd.__file__)))
    reactor.spawnProcess(process, sys.executable, [sys.executable, "-c", WORKER, package_parent, folder],
                         env=os.environ)


class WorkerProcess(protocol.ProcessProtocol):
    """The daemon's end of the worker's pipes: JSON lines both ways."""

    def __init__(self, feeder: "IndexFeeder"):
        self.feeder = feeder
        self._out = b""
        self._err = b""

    def connectionMade(self):
        self.feeder.worker_started(self)

    def tell(self, messages: list[dict]) -> None:
        self.transport.write(b"".join(orjson.dumps(message) + b"\n" for message in messages))

    def outReceived(self, data: bytes):
        *lines, self._out = (self._out + data).split(b"\n")
        for line in lines:
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.feeder.worker_said_garbage(line)
            else:
                self.feeder.heard(message)

    def errReceived(self, data: bytes):
        *lines, self._err = (self._err + data).split(b"\n")
        for line in lines:
            self.feeder.worker_said_garbage(line)

    def processEnded(self, reason):
        self.feeder.worker_ended(reason)


class IndexFeeder(service.Service):
    """Tells the index worker what changed among the sessions of `sessions()`."""

    _log = Logger()

    def __init__(self, index, sessions, reactor, spawn=None, ready=lambda: defer.succeed(None),
                 flush_seconds: float = FLUSH_SECONDS, sweep_seconds: float = SWEEP_SECONDS):
        """`index` is the daemon's reading side, reopened when the worker rebuilds the index; `spawn(process)`
        starts a worker connected to the `ProcessProtocol` given; `ready()` fires once `sessions()` lists
        those found at start-up (the store loads in a thread)."""
        self.index = index
        self.sessions = sessions
        self.reactor = reactor
        self.spawn = spawn or (lambda process: spawn_worker(reactor, index.folder, process))
        self.ready = ready
        self.flush_seconds = flush_seconds
        self.sweep_seconds = sweep_seconds
        self._told: dict[str, tuple[int, int, int]] = {}  # key -> (lines, bytes, PARs) the worker was told
        self._changed: dict[str, object] = {}             # key -> session, to tell at the next flush
        self._gone: set[str] = set()                      # keys to tell the worker to forget
        self._flushing = None
        self._sweeper = None
        self._worker: WorkerProcess | None = None
        self._syncs = self._idle = 0     # syncs sent, and the last one the worker answered done
        self._heard = 0                  # the last sync the worker read: news waits while one is unread
        self._started_at = 0.0
        self._swept = False
        self._ready = False
        self._restart_delay = RESTART_SECONDS
        self._restarting = None
        self._stopped: defer.Deferred | None = None

    def startService(self):
        super().startService()
        self._start_worker()
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        self.ready().addCallback(self._now_ready).addErrback(
            lambda f: self._log.failure("the search index's sweep stopped", f))

    def _now_ready(self, _):
        self._ready = True
        return self._sweeper.start(self.sweep_seconds, now=True)

    def stopService(self):
        super().stopService()
        for call in (self._flushing, self._restarting):
            if call is not None and call.active():
                call.cancel()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        if self._worker is None:
            return None
        self._stopped = defer.Deferred()
        self._worker.transport.closeStdin()  # the worker finishes its transaction and exits
        killer = self.reactor.callLater(STOP_SECONDS, self._kill)
        return self._stopped.addBoth(lambda result: killer.cancel() if killer.active() else None)

    def _kill(self):
        if self._worker is not None:
            self._log.warn("the index worker did not stop within {seconds:g} s; killing it", seconds=STOP_SECONDS)
            try:
                self._worker.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass

    # -- the hub's listener interface --------------------------------------------

    def lines_appended(self, session, first: int, lines: list[bytes]) -> None:
        self._changed_durably(session)

    def par_added(self, session, index: int, par: dict) -> None:
        self._changed_durably(session)

    def _changed_durably(self, session) -> None:
        """The hub speaks once a change is durable: the worker is told again even if what it was told looks
        the same (a PAR is counted before it is durable, so a sweep may have told its count too early)."""
        self._told.pop(session.path, None)
        self._changed[session.path] = session
        self._schedule()

    # -- telling the worker ----------------------------------------------------------

    def _schedule(self) -> None:
        if self._flushing is None and self._worker is not None:
            self._flushing = self.reactor.callLater(self.flush_seconds, self.flush)

    def flush(self) -> None:
        """Tell the worker of every session changed, or gone, since the last flush."""
        self._flushing = None
        if self._worker is None:
            return  # told again in full when a worker is back
        if self._heard < self._syncs:
            return  # the worker has not read the last news yet: these wait, merged, for its "heard"
        news = [{"op": "forget", "key": key} for key in self._gone]
        for key, session in self._changed.items():
            now = durable_state(session)
            if self._told.get(key) != now:
                news.append(session_news(session))
                self._told[key] = now
        self._changed.clear()
        self._gone.clear()
        if news:
            self._syncs += 1
            self._worker.tell([*news, {"op": "sync", "n": self._syncs}])

    def sweep(self) -> None:
        """Find what changed without the hub saying so (local files), and what is gone."""
        if self._worker is None:
            return
        seen = set()
        for session in self.sessions():
            seen.add(session.path)
            if self._told.get(session.path) != durable_state(session):
                self._changed[session.path] = session
        for key in [key for key in self._told if key not in seen and key not in self._changed]:
            del self._told[key]
            self._gone.add(key)
        self._swept = True
        self.flush()

    def caught_up(self) -> bool:
        """Everything durable so far is searchable (as of the last sweep)."""
        return (self._worker is not None and self._swept and not self._changed and not self._gone
                and self._idle == self._syncs)

    # -- the worker's side ------------------------------------------------------------

    def _start_worker(self) -> None:
        self._restarting = None
        try:
            self.spawn(WorkerProcess(self))
        except Exception:
            self._log.failure("could not start the index worker; trying again in {seconds:g} s",
                              seconds=self._restart_delay)
            self._again()

    def worker_started(self, worker: WorkerProcess) -> None:
        self._worker = worker
        self._started_at = self.reactor.seconds()
        self._syncs = self._heard = self._idle = 0
        if self._ready:  # a worker started again: tell it everything
            self.sweep()

    def heard(self, message: dict) -> None:
        if "heard" in message:
            self._heard = max(self._heard, message["heard"])
            if self._changed and self._flushing is None:
                self.flush()
        elif "idle" in message:
            self._idle = max(self._idle, message["idle"])
        elif message.get("reset"):
            self.index.reopen()
        elif "log" in message:
            self._log.emit(LogLevel.levelWithName(message["log"]), "{text}", text=message["text"])

    def worker_said_garbage(self, line: bytes) -> None:
        if line.strip():
            self._log.error("index worker: {line}", line=line.decode("utf-8", "replace"))

    def worker_ended(self, reason) -> None:
        self._worker = None
        self._told.clear()
        self._gone.clear()  # a new worker is told only of what is there
        self._swept = False
        if self._stopped is not None:
            self._stopped.callback(None)
            return
        if self.reactor.seconds() - self._started_at >= MAX_RESTART_SECONDS:
            self._restart_delay = RESTART_SECONDS  # it worked for a while: not part of a crash loop
        self._log.error("the index worker stopped ({reason}); searches may miss recent lines until it is started "
                        "again in {seconds:g} s", reason=reason.getErrorMessage(), seconds=self._restart_delay)
        self._again()

    def _again(self) -> None:
        self._restarting = self.reactor.callLater(self._restart_delay, self._start_worker)
        self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_SECONDS)
