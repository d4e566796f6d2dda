"""
One session's upload: where the server stands, what is in flight, what comes next.

The server is the authority on position: on every (re)connect the sender asks
(`resume`) and reads its file from there.  It re-sends some stored lines as
checks, so a file rewritten behind the server's back is refused (`conflict`)
instead of silently spliced.  Lines travel as raw strings
in `events` batches of bounded size; nothing is kept once sent, because the
file itself is the write-ahead log.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import orjson

from fulabd.uploader.compressed import Unfinished, Unreadable
from fulabd.uploader.connection import SKIPPED
from fulabd.uploader.identity import Identity
from fulabd.uploader.tail import LineReader, Position, Replaced

MAX_FRAME_BYTES = 1 << 20
PACKED_OVERHEAD = 4096  # a packed frame's JSON header and zstd's own bytes, beyond 1/128 of its lines
CHECK_LINES = 8
RETRY_SECONDS = 5
FULL_RETRY_SECONDS = 60
MAX_AHEAD = 2  # generations of a file, in one run, whose server copy claimed more lines than the file has
READ_ERRORS = (Replaced, Unreadable, OSError)  # what reading the file may raise (see Sender._read_failed)

WAITING = "waiting"        # no connection
RESUMING = "resuming"      # asked the server where the session stands
CHECKING = "checking"      # the server's copy is compared with the file before anything new is sent
STREAMING = "streaming"    # sending lines as the file grows
RESYNCING = "resyncing"    # a message was refused: let the rest settle, then resume
BLOCKED = "blocked"        # cannot go on without the user (or a new generation)
READ = "read"              # a compressed file, all acknowledged: it does not grow, but a new server is asked again
STOPPED = "stopped"


@dataclass
class Batch:
    end: Position
    lines: int
    size: int


class Sender:
    """Uploads one file as one session (one generation of it) over the current channel."""

    def __init__(self, base: Identity, reader: LineReader, budget, reporter, clock, generation: int = 1,
                 max_frame_bytes: int = MAX_FRAME_BYTES, ahead: int = 0):
        """`ahead`: how many generations before this one, in this run, ended because the server claimed
        more lines than the file has."""
        self.base = base
        self.identity = base.generation(generation)
        self.reader = reader
        self.budget = budget
        self.reporter = reporter
        self.clock = clock
        self.generation = generation
        self.max_frame_bytes = max_frame_bytes
        self.state = WAITING
        self.problem: str | None = None  # why the session is blocked, for the user
        self.ahead = ahead
        self.channel = None
        self.acked = Position(0, 0)
        self.inflight: deque[Batch] = deque()
        self.legacy = False
        self.live = False
        self.idle = False
        self._retry = None
        self._resync_delay = 0.0
        self._checks_pending = 0
        self._resumed_at: tuple[int, tuple] = (0, ())

    @property
    def session_id(self) -> str:
        return self.identity.session_id

    @property
    def caught_up(self) -> bool:
        """Every complete line of the file is acknowledged (or the session cannot go on)."""
        return self.state in (BLOCKED, STOPPED, READ) or (self.state == STREAMING and self.idle and not self.inflight)

    def unsent_bytes(self) -> int:
        """Bytes of the file past what was sent or acknowledged.

        Not the reader's position: a resume's checks move it back to line 0
        while the server already holds every line.
        """
        sent = max((self.acked, *(batch.end for batch in self.inflight)), key=lambda p: p.offset)
        return self.reader.bytes_after(sent)

    def attach(self, channel):
        self.channel = channel
        self._resume()

    def detach(self):
        """The connection is gone, and with it everything in flight (the budget is reset with it)."""
        self.channel = None
        self.inflight.clear()
        self._cancel_retry()
        if self.state not in (BLOCKED, STOPPED):
            self.state = WAITING

    def stop(self):
        """Send nothing more; what is in flight still gets its ack."""
        self._cancel_retry()
        if self.state != BLOCKED:
            self.state = STOPPED

    def _cancel_retry(self):
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _resume(self):
        if self.channel is None or self.state in (BLOCKED, STOPPED):
            return
        self.state = RESUMING
        if self.channel.legacy:
            return self._resumed(SKIPPED)
        self.channel.send(orjson.dumps({"type": "resume", "session-id": self.session_id}), self._resumed)

    def _resumed(self, reply: dict):
        if self.state != RESUMING:
            return
        if reply.get("type") == "error" and reply.get("err") == "unknown-type":
            if not self.legacy:
                self.reporter.warning(self, "the server does not know resume (an older server); the session "
                                            "is sent from its start, and an old server may store it twice")
            self.legacy = True
            return self._start_from(0)
        if reply.get("type") != "ack" or not isinstance(reply.get("count"), int):
            return self._refused(reply)
        self._start_from(reply["count"])

    def _start_from(self, count: int):
        """Continue after the server's `count` lines.

        Lines the server holds go first as checks (it refuses them with
        `conflict` if they differ): line 0 always, and on a fresh start, when
        nothing of the file is known yet, CHECK_LINES lines spread over it, so
        a file rewritten while the uploader was not running is not spliced.
        The last stored line is re-sent with the next ones.
        """
        known = [self.acked, *(batch.end for batch in self.inflight)]
        fresh = self.acked.index == 0 and not self.inflight
        checks = {0, *(count * i // CHECK_LINES for i in range(1, CHECK_LINES))} if fresh else {0}
        self._checks_pending = 0
        try:
            for index in sorted(checks - {count - 1}) if count > 1 else ():
                line = self.reader.read(1) if self.reader.seek(index, tuple(known)) else []
                if not line:
                    return self._server_ahead(count)
                self._send_check(index, line[0])
                self._checks_pending += 1
                known.append(self.reader.position)
        except READ_ERRORS as e:
            return self._read_failed(e)
        self._resumed_at = (count, tuple(known))
        if self._checks_pending:
            self.state = CHECKING  # new lines wait until every check is acknowledged: no splice onto another file
        else:
            self._stream_after_checks()

    def _stream_after_checks(self):
        """The server holds this file's lines: send from its last stored line on (re-sent as a last check)."""
        count, known = self._resumed_at
        try:
            start = max(count - 1, 0)
            if not self.reader.seek(start, known):
                return self._server_ahead(count)
            self.acked = self.reader.position
        except READ_ERRORS as e:
            return self._read_failed(e)
        self.state = STREAMING
        if count > 0:
            try:
                lines = self.reader.read(self._frame_bytes())
            except READ_ERRORS as e:
                return self._read_failed(e)
            if not lines:
                return self._server_ahead(count)
            self.acked = Position(count, self.acked.offset + len(lines[0]) + 1)  # it holds that last line too
            self._send_lines(start, lines, self.reader.position)
        self.pump()

    def pump(self):
        """Send what the file holds, as far as the window allows."""
        if self._retry is not None:
            return
        while self.state == STREAMING and self.channel is not None and self.budget.available():
            try:
                seq = self.reader.position.index
                lines = self.reader.read(self._frame_bytes())
            except READ_ERRORS as e:
                return self._read_failed(e)
            if not lines:
                self._check_live()
                return
            self._send_lines(seq, lines, self.reader.position)
        if self.state == STREAMING and self.channel is not None:
            self.budget.wait(self)

    def _send_check(self, index: int, line: bytes):
        """A line the server holds, again: refused with `conflict` if the file is not the one it holds.  Sent
        as the line itself was (packed, when the connection packs): as JSON text, a line that is not UTF-8
        would never match the bytes stored, and each restart would start the session again."""
        header = {"type": "events", "session-id": self.session_id, "seq": index}
        packer = self.channel.packer
        if packer is not None and not self.legacy:
            self.channel.send(packer.encode(header, [line]), self._checked, binary=True)
            return
        self.channel.send(orjson.dumps(header | {"events": [line.decode("utf-8", "replace")]}), self._checked)

    def _checked(self, reply: dict):
        if reply.get("type") != "ack":
            if self.state not in (BLOCKED, STOPPED):
                self._refused(reply)
        elif self.state == CHECKING:
            self._checks_pending -= 1
            if not self._checks_pending:
                self._stream_after_checks()

    def _send_lines(self, seq: int, lines: list[bytes], end: Position):
        self.idle = False
        size = sum(len(line) + 1 for line in lines)
        packer = self.channel.packer
        if packer is not None and not self.legacy:
            header = {"type": "init", "session-id": self.session_id, **self.identity.meta} if seq == 0 \
                else {"type": "events", "session-id": self.session_id, "seq": seq}
            # Checked before the stream takes the lines, with room for the header and zstd's worst case.
            if not self._over_limit(seq, size, needed=size + (size >> 7) + PACKED_OVERHEAD):
                self._send_batch(seq, lines, end, [packer.encode(header, lines)], size, binary=True)
            return
        events = []
        for offset, line in enumerate(lines):
            try:
                events.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                self.reporter.warning(self, f"line {seq + offset} is not valid UTF-8; it is sent with "
                                            "replacement characters and will not be byte-identical")
                events.append(line.decode("utf-8", "replace"))
        if self.legacy:
            messages = self._legacy_messages(seq, events)
        elif seq == 0:
            messages = [{"type": "init", "session-id": self.session_id, **self.identity.meta, "events": events}]
        else:
            messages = [{"type": "events", "session-id": self.session_id, "seq": seq, "events": events}]
        self._send_batch(seq, lines, end, [orjson.dumps(message) for message in messages], size)

    def _over_limit(self, seq: int, size: int, needed: int) -> bool:
        """Lines of `size` bytes whose message takes `needed` bytes are over the server's limit: the session is
        blocked, with why."""
        limit = self.budget.server_limit
        if limit is None or needed <= limit:
            return False
        self._block({"err": "too-large", "detail": f"line {seq} is {size - 1} bytes, over the server's message "
                                                   f"limit of {limit} bytes"})
        return True

    def _send_batch(self, seq: int, lines: list[bytes], end: Position, payloads: list[bytes], size: int,
                    binary: bool = False):
        """Send one batch's messages (several only for an old server), whose lines hold `size` bytes; the last
        one's ack covers the batch."""
        if not binary and self._over_limit(seq, size, needed=max(map(len, payloads))):
            return
        batch = Batch(end, len(lines), size)
        self.inflight.append(batch)
        self.budget.take(size)
        for payload in payloads[:-1]:
            self.channel.send(payload, self._legacy_step)
        self.channel.send(payloads[-1], lambda reply: self._acked(batch, reply), binary=binary)

    def _frame_bytes(self) -> int:
        """Lines per batch: ours, or less once the server said its limit (JSON escaping can double a line)."""
        limit = self.budget.server_limit
        return self.max_frame_bytes if limit is None else max(1, min(self.max_frame_bytes, limit // 2))

    def _legacy_messages(self, seq: int, events: list[str]) -> list[dict]:
        """An old server gets `init` for line 0 on, then one `event` per line (with `seq`, which new servers use)."""
        if seq == 0:
            return [{"type": "init", "session-id": self.session_id, **self.identity.meta, "events": events}]
        return [{"type": "event", "session-id": self.session_id, "seq": seq + i, "event": event}
                for i, event in enumerate(events)]

    def _legacy_step(self, reply: dict):
        if reply.get("type") == "error":
            self._refused(reply)

    def _acked(self, batch: Batch, reply: dict):
        if batch not in self.inflight:
            return
        while self.inflight and self.inflight[0] is not batch:
            self.budget.release(self.inflight.popleft().size)
        self.inflight.popleft()
        self.budget.release(batch.size)
        if self.state in (BLOCKED, STOPPED):
            if reply.get("type") == "ack":  # stored all the same: a stop's count of what is unsent relies on it
                self.acked = batch.end
            if not self.inflight:
                self.reporter.idle(self)
            return
        if reply.get("type") != "ack":
            return self._refused(reply)
        if self.state == RESYNCING:
            return self._settled()
        self.acked = batch.end
        self.reporter.acked(self, reply.get("appended", batch.lines), batch.size, reply.get("count", batch.end.index))
        self.pump()

    def _refused(self, reply: dict):
        err = reply.get("err", "?")
        if self.state in (BLOCKED, STOPPED):
            return
        if self.state == RESYNCING:
            return self._settled()
        if err == "conflict":
            return self._conflict(reply.get("detail", "the server holds different lines"))
        if err in ("bad-event", "missing-session-id", "bad-json", "invalid-path", "unknown-type"):
            return self._block(reply)
        if err != "gap":
            self.reporter.error(self, reply, blocked=False)
        self.state = RESYNCING
        self._resync_delay = {"gap": 0, "storage-full": FULL_RETRY_SECONDS}.get(err, RETRY_SECONDS)
        self._settled()

    def _settled(self):
        """Once nothing of this session is in flight, wait a little, then ask the server where it stands."""
        if self.inflight or self.state != RESYNCING or self._retry is not None:
            return
        self._retry = self.clock.callLater(self._resync_delay, self._retry_now)

    def _retry_now(self):
        self._retry = None
        self._resume()

    def _check_live(self):
        self.idle = True
        if not self.inflight and not self.live:
            self.live = True
            self.reporter.live(self)
        if not self.inflight:
            if self.reader.compressed:
                self.state = READ  # a compressed file does not grow: read once, not followed
            self.reporter.idle(self)

    def _block(self, reply: dict):
        """Stop this session until the user acts; `--once` names it and exits non-zero."""
        self.state = BLOCKED
        self.problem = f"{reply.get('err', '?')}: {reply.get('detail', '')}"
        self.reporter.error(self, reply, blocked=True)

    def _server_ahead(self, count: int):
        """The server holds more lines than the file has: the file was rewritten shorter (a new generation
        takes its content), unless generations keep meeting the same claim: then the server is wrong."""
        if self.ahead >= MAX_AHEAD:
            return self._block({"err": "server-ahead", "detail": f"the server claims {count} lines, more than "
                                f"the file has, for generation {self.generation} of this file too: its store is "
                                "damaged or it is not a fulabd server; no further generation is started"})
        self.ahead += 1
        self._conflict(f"the file has fewer than {count} lines, the server holds {count}")

    def _conflict(self, detail: str):
        self.state = BLOCKED
        self.reporter.conflict(self, detail)

    def _read_failed(self, error: Exception):
        """The file could not be read where the session stands: each cause has its own way on."""
        if isinstance(error, Replaced):
            self.state = BLOCKED
            self.reporter.conflict(self, str(error))
        elif isinstance(error, Unreadable) and not isinstance(error, Unfinished):
            self._block({"err": "unreadable", "detail": str(error)})
        elif isinstance(error, FileNotFoundError):
            self._gone()
        else:  # an Unfinished compressed file, or a file that cannot be read for now: taken up once it can
            self.reporter.cannot_read(self, error)

    def _gone(self):
        self.state = STOPPED
        self.reporter.gone(self)
