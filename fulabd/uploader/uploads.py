"""
Every session being uploaded over the one connection, by file.

A file whose content no longer matches what the server holds (rewritten,
shrunk, replaced) is never spliced: its sender stops with a conflict and the
file's current content is uploaded as the next generation of the session,
`<session-id>~g<N>`, whose metadata names the original as `parent-session-id`.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer

from fulabd.uploader.compressed import Unreadable
from fulabd.uploader.identity import Identity, NotReady, identify
from fulabd.uploader.sender import Sender
from fulabd.uploader.window import Budget
from fulabd.uploader.tail import LineReader

STOP_TIMEOUT = 15
MAX_GENERATIONS = 100  # a file rewritten more often than this in one run is not followed further


class Uploads:
    def __init__(self, clock, reporter, source: str | None = None, overrides: dict | None = None,
                 budget: Budget | None = None, max_frame_bytes: int | None = None):
        self.clock = clock
        self.reporter = reporter
        self.source = source
        self.overrides = overrides or {}
        self.budget = budget or Budget()
        self.frame = {"max_frame_bytes": max_frame_bytes} if max_frame_bytes else {}
        self.senders: dict[str, Sender] = {}
        self.unreadable: dict[str, str] = {}  # files that cannot be read now, and why (said once per reason)
        self.channel = None
        self.stopping = False
        self._idle_waiters: list[defer.Deferred] = []
        self._stopped: defer.Deferred | None = None
        self._deadline = None  # (seconds, what to call) while a connection must work in time (--once)
        self._deadline_call = None

    def track(self, path) -> Sender | None:
        """Upload `path` (or, if it already is, send what it has new)."""
        key = str(path)
        sender = self.senders.get(key)
        if sender is not None:
            sender.pump()
            return sender
        if self.stopping:
            return None
        try:
            identity = identify(Path(path), self.source, self.overrides)
        except (NotReady, FileNotFoundError):
            return None
        except (OSError, Unreadable) as e:
            self._cannot_read(key, e)
            return None
        self.unreadable.pop(key, None)
        return self._start(key, identity, 1)

    def _cannot_read(self, key: str, error: Exception):
        """Said once per reason; the watcher looks at the file again, and `--once` names it at the end."""
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        if self.unreadable.get(key) != reason:
            self.unreadable[key] = reason
            self.reporter.say(f"cannot read {key} ({reason}); it is uploaded once it can be read", always=True)

    def _start(self, key: str, base: Identity, generation: int, ahead: int = 0) -> Sender:
        sender = Sender(base, LineReader(key), self.budget, self, self.clock, generation=generation, ahead=ahead,
                        **self.frame)
        self.senders[key] = sender
        self.reporter.tracking(sender)
        if self.channel is not None:
            sender.attach(self.channel)
        return sender

    def connected(self, channel):
        self.channel = channel
        self.budget.reset()
        for sender in list(self.senders.values()):
            sender.attach(channel)

    def confirmed(self):
        """The server answered on the new connection: it works."""
        if self._deadline_call is not None and self._deadline_call.active():
            self._deadline_call.cancel()
        self.reporter.connected(len(self.senders))
        self._check_idle()  # with no session to send (or none with a line yet), caught up at once

    def connect_deadline(self, seconds: float, give_up):
        """Call `give_up` if no connection works within `seconds` now, or after any connection is lost."""
        self._deadline = (seconds, give_up)
        self._deadline_call = self.clock.callLater(seconds, give_up)

    def disconnected(self, channel, why: tuple[str, bool] | None):
        """`why`: the reason in words and whether the server ended it; None if it was never a working connection."""
        if channel is not self.channel:
            return
        self.channel = None
        self.budget.reset()
        for sender in self.senders.values():
            sender.detach()
        if why is not None and not self.stopping:
            self.reporter.disconnected(*why)
        if self._deadline is not None and not self.stopping and not (self._deadline_call and
                                                                      self._deadline_call.active()):
            self._deadline_call = self.clock.callLater(*self._deadline)
        self._check_idle()
        self._check_stopped()

    def too_large(self, reply: dict):
        """The server refused a message as too large and closes the connection: send smaller ones from now on."""
        if isinstance(reply.get("limit"), int):
            self.budget.server_limit = reply["limit"]
            self.reporter.say(f"the server accepts messages of at most {reply['limit']} bytes; "
                              "sending smaller batches", always=True)
        else:
            self.reporter.server_error(reply)

    # What senders report.

    def conflict(self, sender: Sender, detail: str):
        key = sender.reader.path
        try:
            base = identify(Path(key), self.source, self.overrides)
        except (NotReady, OSError, Unreadable):
            base = None
        if base is not None and base.session_id != sender.base.session_id:
            successor = self._start(key, base, 1)
        elif base is not None and sender.generation >= MAX_GENERATIONS:
            sender.problem = f"conflict: {detail}; the file was rewritten {MAX_GENERATIONS} times in this run"
            self.reporter.error(sender, {"err": "conflict", "detail": f"{detail}; after {MAX_GENERATIONS} generations "
                                         "in this run no further one is started"}, blocked=True)
            return
        elif base is not None:
            successor = self._start(key, sender.base, sender.generation + 1, sender.ahead)
        else:
            del self.senders[key]
            successor = None
        self.reporter.conflict(sender, successor, detail)

    def cannot_read(self, sender: Sender, error: OSError):
        """A file followed that can no longer be read (its permissions, a failing disk): its session stops, and
        the file is taken up again, from what the server holds, once the watcher can read it."""
        sender.stop()
        if self.senders.get(sender.reader.path) is sender:
            del self.senders[sender.reader.path]
        self._cannot_read(sender.reader.path, error)
        self._check_idle()

    def gone(self, sender: Sender):
        if self.senders.get(sender.reader.path) is sender:
            del self.senders[sender.reader.path]
        self.reporter.gone(sender)
        self._check_idle()

    def acked(self, sender: Sender, lines: int, size: int, count: int):
        self.reporter.acked(sender, lines, size, count)

    def live(self, sender: Sender):
        self.reporter.live(sender)

    def idle(self, sender: Sender):
        self._check_idle()
        self._check_stopped()

    def error(self, sender: Sender, reply: dict, blocked: bool):
        self.reporter.error(sender, reply, blocked)
        self._check_idle()

    def warning(self, sender: Sender, text: str):
        self.reporter.warning(sender, text)

    # Waiting for the end.

    @property
    def settled(self) -> bool:
        """Nothing in flight: every line sent is acknowledged (or the connection is gone)."""
        return self.channel is None or all(not sender.inflight for sender in self.senders.values())

    def problems(self) -> list[Sender]:
        """Sessions that stopped short of the file's end (a line refused, a server that is wrong)."""
        return [sender for sender in self.senders.values() if sender.problem is not None]

    @property
    def caught_up(self) -> bool:
        return self.channel is not None and all(sender.caught_up for sender in self.senders.values())

    def when_caught_up(self) -> defer.Deferred:
        """Fires once every complete line of every tracked file is acknowledged."""
        waiter = defer.Deferred()
        self._idle_waiters.append(waiter)
        self._check_idle()
        return waiter

    def _check_idle(self):
        if self._idle_waiters and self.caught_up:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stop(self) -> defer.Deferred:
        """Send nothing new; fires with True once what is in flight is acknowledged (False after STOP_TIMEOUT)."""
        self.stopping = True
        for sender in self.senders.values():
            sender.stop()
        self._stopped = defer.Deferred()
        timeout = self.clock.callLater(STOP_TIMEOUT, self._finish_stop, False)
        self._stopped.addBoth(lambda result: (timeout.active() and timeout.cancel(), result)[1])
        self._check_stopped()
        return self._stopped

    def _check_stopped(self):
        if self._stopped is not None and self.settled:
            self._finish_stop(True)

    def _finish_stop(self, settled: bool):
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(settled)
