"""
The viewer WebSocket: a session's history in bounded pages, then its new lines
and PARs live from the hub, each exactly once and in order.

A viewer is either *paging* (reading durable lines and PARs from its source,
as fast as its socket drains) or *live* (caught up: the hub's lines go out as
they are published).  A live viewer whose socket backs up goes back to paging,
so a slow viewer costs the server a file position, never a growing buffer.
"""

from __future__ import annotations

from collections import deque

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from fulabd import deflate, events, messages
from fulabd.closing import ClosesGracefully
from fulabd.messages import INVALID_PATH

FIRST_FRAME_BYTES = 1024 * 1024   # events in the init/delta frame, about
READ_BYTES = 256 * 1024            # lines read from disk at a time
TURN_BYTES = 1024 * 1024           # sent per reactor turn before yielding to other connections

REFUSAL = {"type": "error", "err": INVALID_PATH,
           "detail": "no session is served at that path or id; take `path` or `id` from GET /fulab/lab/sessions"}


def first_param(params: dict, name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def count_param(value: str | None) -> int:
    """A non-negative count from a query value; anything unparseable is 0 (as the old lab read it)."""
    try:
        return max(0, int((value or "").strip()))
    except ValueError:
        return 0


# Viewers only send pings: a bigger message is refused before it is buffered. (Autobahn's own
# maxMessagePayloadSize would also cap what the server sends, and history frames are ~1 MiB.)
VIEWER_MESSAGE_LIMIT = 64 * 1024


@implementer(IPushProducer)
class StreamProtocol(ClosesGracefully, WebSocketServerProtocol):
    _log = Logger()

    def __init__(self):
        super().__init__()
        self._found = None
        self._requested = None
        self._session = None
        self._source = None
        self._next_line = 0
        self._next_par = 0
        self._pending: deque[bytes] = deque()   # encoded events read from the source, not yet sent
        self._paging = True
        self._history_ended = False
        self._paused = False
        self._scheduled = None
        self._raw = False
        self._peer = "?"
        self._sent = 0

    # -- opening -----------------------------------------------------------

    def onMessageFrameBegin(self, length):
        super().onMessageFrameBegin(length)
        if self.message_data_total_length > VIEWER_MESSAGE_LIMIT:
            self._fail_connection(1009, "viewers send only pings")

    def onConnect(self, request):
        self._peer = self.factory.admit(request, self)
        params = request.params
        path, ident = first_param(params, "path"), first_param(params, "session")
        catalog = self.factory.catalog
        self._found = catalog.by_path(path) if path else catalog.by_id(ident) if ident else None
        self._requested = path if path else ident
        self._next_line = self._offset = count_param(first_param(params, "offset"))
        self._next_par = self._par_offset = count_param(first_param(params, "par_offset"))
        self._raw = first_param(params, "raw") in ("1", "true")

    def onOpen(self):
        if self._found is None:
            self._log.info("viewer from {peer} refused: {requested!r} is not a served session",
                           peer=self._peer, requested=self._requested)
            self.sendMessage(orjson.dumps(REFUSAL | {"path": self._requested}))
            self.sendCloseFrame(code=1008, reasonUtf8=b"invalid path")
            return
        self._session, self._source = self._found
        # An offset past the end starts at the end, as in the old lab: a viewer waiting at line 999 of a
        # 6-line session would otherwise skip lines 6 to 998 when they come.
        self._next_line = self._offset = min(self._offset, self._session.count)
        self._next_par = self._par_offset = min(self._par_offset, len(self._source.pars(self._session)))
        self.factory.viewers.add(self)
        self.factory.hub.subscribe(self._session.path, self)
        self.transport.unregisterProducer()  # twisted.web's channel, which no longer owns this connection
        self.transport.registerProducer(self, True)
        self._log.info("viewer from {peer} opened {path} at line {offset}, PAR {par_offset}",
                       peer=self._peer, path=self._session.path, offset=self._offset, par_offset=self._par_offset)
        self._send_first_frame()
        self._pump()

    def _send_first_frame(self):
        session = self._session
        pars = len(self._source.pars(session))
        page, size = [], 0
        while size < FIRST_FRAME_BYTES and self._fill():
            encoded = self._pending.popleft()
            page.append(encoded)
            size += len(encoded)
        head = {"type": "delta" if self._offset > 0 else "init", "path": session.path,
                "session-id": session.session_id, "id": session.safe_id, "line-count": session.count,
                "offset": self._offset, "par-count": pars, "new-par-count": max(0, pars - self._par_offset),
                "more": bool(self._pending) or self._behind(), "raw": self._raw}
        self._send(orjson.dumps(head)[:-1] + b',"events":[' + b",".join(page) + b"]}")

    # -- paging --------------------------------------------------------------

    def _behind(self) -> bool:
        return self._next_line < self._session.count or self._next_par < len(self._source.pars(self._session))

    def _fill(self) -> bool:
        """Make sure an encoded event is pending, reading from the source; False when caught up."""
        while not self._pending:
            session = self._session
            if self._next_line < session.count:
                lines = self._source.read_lines(session, self._next_line, session.count - self._next_line,
                                                READ_BYTES)
                if not lines:  # a local file rewritten under us: nothing more to read from it
                    return False
                for raw in lines:
                    self._queue(self._event(raw, self._next_line))
                    self._next_line += 1
                continue
            pars = self._source.pars(session)
            if self._next_par < len(pars):
                self._queue(events.par_event(pars[self._next_par], self._next_par))
                self._next_par += 1
                continue
            return False
        return True

    def _queue(self, event: dict | None):
        if event is not None:
            self._pending.append(messages.json_bytes(event))  # a page of them waits here

    def _event(self, raw: bytes, index: int) -> dict | None:
        if self._raw:
            return {"type": "line", "line": index, "raw": raw.decode("utf-8", "replace")}
        return events.normalize(raw, index)

    def _pump(self):
        """Send pending history while the socket drains; caught up, turn live."""
        self._scheduled = None
        sent = 0
        while self._paging and not self._paused and self.state == self.STATE_OPEN:
            if not self._fill():
                self._paging = False
                if not self._history_ended:
                    self._history_ended = True
                    self._send(orjson.dumps({"type": "history-end", "line-count": self._next_line,
                                             "par-count": self._next_par}))
                return
            encoded = self._pending.popleft()
            self._send(b'{"type":"event","event":' + encoded + b"}")
            sent += len(encoded)
            if sent >= TURN_BYTES:
                self._schedule()
                return

    def _schedule(self):
        if self._scheduled is None and self.state == self.STATE_OPEN:
            self._scheduled = self.factory.clock.callLater(0, self._pump)

    def _page_again(self):
        """Fall back to reading from the source (behind, or the socket is full)."""
        self._paging = True
        if not self._paused:
            self._schedule()

    # -- live (hub subscriber) --------------------------------------------------

    def lines_appended(self, session, first: int, lines: list[bytes]) -> None:
        if self._paging:
            return  # the pager reads them from the source: the count is already theirs
        if self._paused or first > self._next_line:
            self._page_again()
            return
        for index, raw in enumerate(lines, first):
            if index < self._next_line:
                continue
            if self._paused:  # the socket filled up mid-batch: the rest is read from the source later
                self._page_again()
                return
            self._next_line = index + 1
            event = self._event(raw, index)
            if event is not None:
                self._send(b'{"type":"event","event":' + orjson.dumps(event) + b"}")

    def par_added(self, session, index: int, par: dict) -> None:
        if self._paging or index < self._next_par:
            return
        if self._paused or index > self._next_par:
            self._page_again()
            return
        self._next_par = index + 1
        self._send(b'{"type":"event","event":' + orjson.dumps(events.par_event(par, index)) + b"}")

    # -- flow control (IPushProducer) -------------------------------------------

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._paging:
            self._schedule()

    def stopProducing(self):
        self._paused = True

    # -- messages and closing ---------------------------------------------------

    def _send(self, payload: bytes):
        self._sent += 1
        self.sendMessage(payload)

    def onMessage(self, payload, isBinary):
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict) and message.get("type") == "ping":
            self._send(messages.encode(messages.pong(self.factory.clock.seconds())))
            return
        self._send(orjson.dumps({"type": "error", "err": messages.UNKNOWN_TYPE,
                                 "detail": "a viewer may only send {\"type\":\"ping\"}; "
                                           "reconnect with ?offset=N to move in the session"}))

    def onClose(self, wasClean, code, reason):
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self in self.factory.viewers:
            self.factory.viewers.discard(self)
            self.factory.hub.unsubscribe(self._session.path, self)
            self._log.info("viewer from {peer} of {path} closed at line {line} (code {code}, {frames} frames)",
                           peer=self._peer, path=self._session.path, line=self._next_line, code=code,
                           frames=self._sent)


class StreamFactory(WebSocketServerFactory):
    protocol = StreamProtocol

    def __init__(self, catalog, hub, clock, admit, **kw):
        """`admit(request, protocol)` returns the viewer's address, or raises `ConnectionDeny` to refuse it."""
        super().__init__(**kw)
        self.admit = admit
        self.catalog = catalog
        self.hub = hub
        self.clock = clock
        self.viewers: set = set()
        self.setProtocolOptions(failByDrop=False,  # say why (close code) when refusing a viewer's message
                                perMessageCompressionAccept=deflate.accepting(VIEWER_MESSAGE_LIMIT))
