"""
What the user sees: one line per event that matters, and a progress bar while catching up.

Status lines go to stderr, each a plain sentence with the session id, so they
read well in a terminal and in a log.  The bar (lines, MB, rate) is drawn only
on a terminal and only while there is a backlog.
"""

from __future__ import annotations

import sys

from twisted.internet.task import LoopingCall

ADVICE = {
    "storage-full": "the server's disk is below its free-space limit; free space on the server. "
                    "The uploader retries every minute and loses nothing",
    "storage-failed": "the server could not write its files; check the server's log and disk. Retrying",
    "too-large": "a line is larger than the server accepts; raise the server's --max-message-size and restart "
                 "the uploader",
    "invalid-path": "the URL is not an upload endpoint; use a URL ending in /fulab/lab/upload/ws",
    "gap": "the server lost track of this session's position; resuming",
    "bad-event": "the server refused a line; report this as a bug with the file",
    "forbidden": "ask the server's operator for a token with the scope named, or upload under a new session id",
}

CONNECT_ADVICE = {
    "certificate verify failed": "the server's certificate is not trusted: pass --cafile with the CA that signed it",
    "wrong version number": "that port does not speak TLS: use ws:// for a daemon without TLS, or the port with TLS",
    "404": "nothing serves that URL path: use a URL ending in /fulab/lab/upload/ws",
    "502": "the proxy in front of the server could not reach it: is the daemon running?",
}
RESTART_GRACE = 10.0  # a server that closed and is back within this is said to have restarted
UNCHANGED_SAID_AFTER = 1.0  # seconds over which sessions found complete on the server are gathered into one line


class Reporter:
    def __init__(self, stream=None, quiet: bool = False, bar: bool | None = None, clock=None, url: str = "",
                 once: bool = False):
        self.stream = stream or sys.stderr
        self.url = url
        self.quiet = quiet
        self.bar = (not quiet and self.stream.isatty()) if bar is None else bar
        self.clock = clock
        self.lines = 0
        self.bytes = 0
        self._drawn = False
        self._last = (0.0, 0)
        self._rate = 0.0
        self._backlog = set()
        self._sent = set()  # senders with lines acknowledged in this run
        self._unchanged = 0  # sessions found complete on the server, not said yet
        self._unchanged_call = None
        self._once = once
        self._last_failure = None
        self._loss_pending = None   # a server that closed the connection may be restarting: wait before saying so
        self._loss_said = False
        self._ticker = LoopingCall(self._draw) if self.bar else None
        if self._ticker is not None:
            self._ticker.clock = clock

    def say(self, text: str, always: bool = False):
        if self.quiet and not always:
            return
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(f"fulab-upload: {text}\n")
        self.stream.flush()

    def connected(self, sessions: int):
        """The server answered on a new connection."""
        self._last_failure = None
        if self._loss_pending is not None and self._loss_pending.active():
            self._loss_pending.cancel()
            self.say(f"server restarted, resuming {sessions} session(s)")
        elif self._loss_said:
            self.say(f"reconnected; resuming {sessions} session(s)", always=True)
        else:
            self.say(f"connected; resuming {sessions} session(s)")
        self._loss_pending, self._loss_said = None, False

    def disconnected(self, why: str, server_ended: bool):
        """Said at once, or, when the server ended it (a restart?), only if it is not back within RESTART_GRACE."""
        if server_ended and self.clock is not None:
            self._loss_pending = self.clock.callLater(RESTART_GRACE, self._say_lost, why)
        else:
            self._say_lost(why)

    def _say_lost(self, why: str):
        self._loss_said = True
        self.say(f"connection lost: {why}; reconnecting with backoff", always=True)

    def connect_failed(self, reason: str, advice: str | None = None):
        """Said once per distinct reason, with what to do about it (not while a restarting server may come back)."""
        if reason == self._last_failure or (self._loss_pending is not None and self._loss_pending.active()):
            return
        self._last_failure = reason
        advice = advice or next((text for key, text in CONNECT_ADVICE.items() if key in reason), None)
        doctor = f"fulab doctor {self.url}".rstrip()
        self.say(f"could not connect to {self.url or 'the server'}: {reason}; "
                 f"{advice + '; ' if advice else ''}retrying with backoff ({doctor} checks each step)", always=True)

    def tracking(self, sender):
        self._backlog.add(sender)
        if self._ticker is not None and not self._ticker.running:
            self._last = (self.clock.seconds(), self.bytes)
            self._ticker.start(0.5, now=False)

    def live(self, sender):
        """Said per session that had lines to send; the sessions the server already held whole are counted
        and said in one line (a laptop's thousands of old sessions are otherwise a line each at every start)."""
        self._backlog.discard(sender)
        if sender not in self._sent and self.clock is not None:
            self._unchanged += 1
            if self._unchanged_call is None:
                self._unchanged_call = self.clock.callLater(UNCHANGED_SAID_AFTER, self.say_unchanged)
            return
        meta = sender.identity.meta
        where = meta.get("project") or meta.get("cwd") or ""
        state = "uploaded" if sender.reader.compressed else "live"
        self.say(f"{state} {sender.session_id} ({meta.get('source', '?')}{', ' + where if where else ''}): "
                 f"{sender.acked.index} lines on the server, from {sender.reader.path}"
                 f"{' (compressed: read once, not followed)' if sender.reader.compressed else ''}")

    def say_unchanged(self):
        """The sessions found complete on the server since this was last said (at once: before a run's end)."""
        if self._unchanged_call is not None and self._unchanged_call.active():
            self._unchanged_call.cancel()
        self._unchanged_call = None
        if self._unchanged:
            self.say(f"{self._unchanged:,} session(s) already complete on the server: nothing new to send"
                     f"{'' if self._once else ', followed for new lines'}")
        self._unchanged = 0

    def acked(self, sender, lines: int, size: int, count: int):
        if lines:
            self._sent.add(sender)
        self.lines += lines
        self.bytes += size
        if self._ticker is not None and not self._drawn and not sender.live:
            self._draw()

    def conflict(self, sender, successor, detail: str):
        self._backlog.discard(sender)
        if successor is None:
            self.say(f"conflict in {sender.session_id}: {detail}; the file is unreadable now, "
                     "it is uploaded again when it has a complete line", always=True)
        else:
            self.say(f"conflict in {sender.session_id}: {detail}. The server keeps what it has; "
                     f"the file's current content is uploaded as session {successor.session_id}", always=True)

    def error(self, sender, reply: dict, blocked: bool):
        err = reply.get("err", "?")
        what = ADVICE.get(err, "")
        state = "this session is stopped until the uploader is restarted" if blocked else ""
        self.say(f"server refused {sender.session_id}: {err}: {reply.get('detail', '')}"
                 f"{'; ' + what if what else ''}{'; ' + state if state else ''}", always=True)

    def server_error(self, reply: dict):
        err = reply.get("err", "?")
        self.say(f"server error {err}: {reply.get('detail', '')}{'; ' + ADVICE[err] if err in ADVICE else ''}",
                 always=True)

    def warning(self, sender, text: str):
        self.say(f"warning for {sender.session_id}: {text}", always=True)

    def gone(self, sender):
        self._backlog.discard(sender)
        self.say(f"{sender.reader.path} was removed; session {sender.session_id} keeps what the server has")

    def _draw(self):
        now = self.clock.seconds()
        then, before = self._last
        if now > then:
            rate = (self.bytes - before) / (now - then)
            self._rate = 0.7 * self._rate + 0.3 * rate if self._rate else rate
        self._last = (now, self.bytes)
        behind = [sender for sender in self._backlog if not sender.live and not sender.caught_up]
        if not behind:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._drawn = False
            return
        to_go = sum(sender.unsent_bytes() for sender in behind)
        self.stream.write(f"\r\x1b[Kcatching up {len(behind)} session(s): {self.lines:,} lines, "
                          f"{self.bytes / 1e6:,.1f} MB sent, {to_go / 1e6:,.1f} MB to go, {self._rate / 1e6:,.1f} MB/s")
        self.stream.flush()
        self._drawn = True
