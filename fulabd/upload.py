"""
The upload WebSocket: laptop → server, one JSON message per frame.

Each message is handled as it arrives (so a `gap` or `conflict` is judged
against everything sent before it), and its reply is sent in message order
once the store says the lines are durable.
"""

from __future__ import annotations

from collections import deque

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from fulabd import messages, packed
from fulabd.access import SELF_PROBE
from fulabd.budget import InflightBudget
from fulabd.closing import ClosesGracefully
from fulabd.frames import WholeFrames
from fulabd.messages import FORBIDDEN, MISSING_SESSION_ID, TOO_LARGE, ProtocolError
from fulabd.tokens import ADMIN, ANYONE

UNBOUNDED_PACKED = 1 << 30  # what packed lines may inflate to when --max-message-size is 0 (no limit)
DEFAULT_INFLIGHT_BYTES = 1024 << 20
BUDGET_LOG_INTERVAL = 60.0
STREAM_CONNECTIONS = 64  # upload connections at once that may use zstd-stream (about 2.5 MB each, a 2 MiB window)


class UploadProtocol(ClosesGracefully, WholeFrames, WebSocketServerProtocol):
    _log = Logger()  # autobahn claims .log

    def __init__(self):
        super().__init__()
        self._session_id: str | None = None
        self._outbox: deque = deque()
        self._touched: dict[str, int] = {}
        self._created: set[str] = set()   # sessions this connection's messages created
        self._peer = "?"
        self._quiet = False
        self.unpacker: packed.Unpacker | None = None  # set when this connection agreed to packed frames
        self._streamed = False  # it holds one of the factory's STREAM_CONNECTIONS
        self.held = False
        self.replies_waiting = False

    def onConnect(self, request):
        self._peer = self.factory.admit(request, self)
        self.principal = self.factory.principal_of(request)
        self.uploader = self.principal.name
        self._quiet = self.uploader == SELF_PROBE  # the listener's self-probe, every few seconds: not logged
        offer = packed.encodings(request.headers.get(packed.HEADER.lower()))
        self._streamed = packed.STREAMED in offer and self.factory.take_stream()
        if self._streamed or packed.ENCODING in offer:
            self.unpacker = packed.Unpacker(stream=self._streamed)
            return None, {packed.HEADER: packed.STREAMED if self._streamed else packed.ENCODING}
        return None

    def onOpen(self):
        self.factory.connections.add(self)
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()  # twisted.web's channel, which no longer owns this connection
        self.transport.registerProducer(RepliesWaiting(self), True)
        if not self._quiet:
            self._log.info("upload connection open from {peer} (uploader {uploader})" if self.uploader else
                           "upload connection open from {peer}", peer=self._peer, uploader=self.uploader)

    def onClose(self, wasClean, code, reason):
        self.factory.budget.forget(self)
        if self._streamed:
            self._streamed = False
            self.factory.streams -= 1
        if self not in self.factory.connections:
            return
        self.factory.connections.discard(self)
        for session_id, appended in self._touched.items():
            self.factory.store.detach(session_id)
            session = self.factory.store.get(session_id)
            self._log.info("upload of session {session_id} from {peer}: {appended} lines appended, {count} stored",
                           session_id=session_id, peer=self._peer, appended=appended,
                           count=session.count if session else 0)
        if not self._quiet:
            self._log.info("upload connection from {peer} closed (code {code})", peer=self._peer, code=code)

    # The daemon's memory budget (fulabd.budget): a frame that does not fit stops this connection's reading;
    # and so do replies the client does not read (`RepliesWaiting`).

    def frame_begins(self, length: int) -> bool:
        """Asked once per data frame, whichever reads it (`WholeFrames` or Autobahn); on a packed connection a
        message may inflate to the message size limit, and asks for that until it is decoded."""
        return self.factory.budget.frame(self, length, self._packed_limit() if self.unpacker is not None else 0)

    def _packed_limit(self) -> int:
        return self.maxMessagePayloadSize or UNBOUNDED_PACKED

    def processData(self):
        """Held, or replies waiting: leave what is buffered unread until reading may go on."""
        return False if self.reading_stopped() else super().processData()

    def reading_stopped(self) -> bool:
        return self.held or self.replies_waiting

    def hold(self):
        self.held = True
        self.transport.pauseProducing()
        self.factory.budget_full()

    def carry_on(self):
        self.held = False
        self._read_again()

    def replies_wait(self, waiting: bool):
        self.replies_waiting = waiting
        if waiting:
            self.transport.pauseProducing()
        else:
            self._read_again()

    def _read_again(self):
        if not self.reading_stopped():
            self.transport.resumeProducing()
            self.factory.clock.callLater(0, self._read_buffered)

    def _read_buffered(self):
        if not self.reading_stopped() and self.state == self.STATE_OPEN:
            self.consumeData()

    def onAutoPingTimeout(self):
        """A held connection's pong sits unread in its buffer: wait for it, rather than drop a live client."""
        if self.reading_stopped():
            self.autoPingTimeoutCall = self.factory.clock.callLater(self.autoPingTimeout, self.onAutoPingTimeout)
            return
        super().onAutoPingTimeout()

    def onMessage(self, payload, isBinary):
        size = self.factory.budget.message_received(self)
        self.factory.messages_in += 1
        self.factory.bytes_in += len(payload)
        if isBinary and self.unpacker is None:
            self._reply(defer.fail(ProtocolError(messages.BAD_JSON, "binary frames are accepted only after a "
                                                                    f"{packed.HEADER} handshake; send JSON text frames")),
                        size, None)
            return
        decoded = None
        try:
            if isBinary:
                message = self.unpacker.decode(payload, self._packed_limit())
            else:
                decoded = messages.decode(payload)
                message = messages.parse_message(decoded)
        except ProtocolError as e:
            if isinstance(e, packed.StreamLost) and e.code != TOO_LARGE:
                self._stream_lost(e, size)
            elif e.code == TOO_LARGE:
                self.factory.budget.release(size)
                self._max_message_size_exceeded(f"more than {e.extra['limit']}", e.extra["limit"], e.detail)
            else:
                self._reply(defer.fail(e), size, self._named_in(decoded))
            return
        if self.unpacker is not None:
            held = sum(map(len, message.lines)) + len(message.lines) if isBinary else len(payload)
            size = self.factory.budget.decoded(size, held)
        self._reply(defer.maybeDeferred(self._handle, message), size,
                    getattr(message, "session_id", None) or self._session_id)

    def _named_in(self, decoded: dict | None) -> str | None:
        """The session an error reply to an unusable message names: the one it named, the connection's if it named
        none, and none if it could not be read or its id is what is wrong (a client may match errors by id)."""
        if decoded is None:
            return None
        if all(decoded.get(key) is None for key in messages.SESSION_ID_KEYS):
            return self._session_id
        try:
            return messages.session_id_of(decoded)
        except ProtocolError:
            return None

    def _handle(self, message) -> defer.Deferred:
        if isinstance(message, messages.Ping):
            return defer.succeed(messages.pong(self.factory.clock.seconds()))
        if isinstance(message, messages.Resume):
            self._session_id = message.session_id
            return self._owned(message.session_id, lambda: self.factory.store.resume(message.session_id)).addCallback(
                lambda count: messages.ack(message.session_id, count, 0, False) | {"resume": True})
        session_id = message.session_id or self._session_id
        if session_id is None:
            raise ProtocolError(MISSING_SESSION_ID, "no \"session-id\" given and no init on this connection; "
                                                    "send init first or name the session in every message")
        if isinstance(message, messages.Append) and message.kind == "init":
            self._session_id = session_id
        store = self.factory.store
        if isinstance(message, messages.Par):
            return self._owned(session_id, lambda: store.add_par(session_id, message.par, author=self.uploader)
                               ).addCallback(self._par_added, session_id)
        return self._owned(session_id, lambda: store.append(session_id, message.seq, message.lines, message.meta)
                           ).addCallback(self._appended, session_id)

    def _appended(self, result, session_id: str) -> dict:
        self._attach(session_id)
        self._touched[session_id] += result.appended
        self.factory.lines_in += result.appended
        return messages.ack(session_id, result.count, result.appended, result.dedup)

    def _par_added(self, result, session_id: str) -> dict:
        index, par, added = result
        self._attach(session_id)
        return {"type": "ack", "session-id": session_id, "par-id": par["id"], "pars": index + 1, "dedup": not added}

    def _attach(self, session_id: str):
        """Count this connection as the session's uploader once something of it is stored (ids that store
        nothing leave nothing behind)."""
        if session_id not in self._touched:
            self._touched[session_id] = 0
            self.factory.store.attach(session_id)
            self._log.info("upload of session {session_id} from {peer} started", session_id=session_id,
                           peer=self._peer)

    def _owned(self, session_id: str, then) -> defer.Deferred:
        """`then()`'s Deferred, once this connection may send to the session; else `forbidden`.

        A session the store does not know may just not be loaded yet (at start-up): then the check waits
        for the load, as the store's own calls do (`resume` of an unknown session waits for nothing else),
        so messages keep their order.  Otherwise the check is made at once, with no Deferred of its own (this
        runs for every message; `_handle`'s caller turns what it raises into the reply)."""
        store = self.factory.store
        session = store.get(session_id)
        if session is not None or store.problem() is None:
            self._check_owner(session_id, session)
            return self._claimed(session_id, then())
        return store.resume(session_id).addCallback(
            lambda _: self._check_owner(session_id, store.get(session_id))).addCallback(
            lambda _: self._claimed(session_id, then()))

    def _check_owner(self, session_id: str, session):
        """A session belongs to the token that created it: others may not add to it (or learn its count),
        unless they are `admin`.  Sessions created without a token belong to no one."""
        if session is None or not session.stored:
            self._created.add(session_id)
            return
        owner = session.meta.get("uploader")
        if owner is None or owner == self.uploader or self.principal.may(ADMIN):
            return
        raise ProtocolError(FORBIDDEN, f"this token may not add to session {session_id!r}: it was created with "
                                       "another token; upload under a new session id, or ask the operator for "
                                       "an admin token")

    def _claimed(self, session_id: str, result):
        """Name the token's holder in the meta of a session this connection created, as soon as the store has
        made its file (the store writes at once; the meta is made durable with it), so that another token's
        message is `forbidden` from then on, not only once the first commit is acknowledged.

        A session is never re-attributed: one created without a token stays no one's."""
        if self.uploader and session_id in self._created:
            session = self.factory.store.get(session_id)
            if session is not None and session.stored and session.meta.get("uploader") is None:
                self.factory.store.update_meta(session_id, uploader=self.uploader)
        return result

    def _reply(self, result: defer.Deferred, size: int, session_id: str | None):
        """Queue a reply; replies leave in the order their messages came, and free the message's `size` bytes.
        An error names `session_id`, the session of the message it answers."""
        entry = [None, size]
        self._outbox.append(entry)

        def settle(value):
            if isinstance(value, defer.Failure):
                error = value.value
                if not isinstance(error, ProtocolError):
                    self._log.failure("upload message for session {session_id} from {peer} failed", value,
                                      session_id=self._session_id, peer=self._peer)
                    error = ProtocolError(messages.STORAGE_FAILED, "the server failed to handle this message; "
                                                                   "it was not stored, resend it")
                self._log.info("upload of session {session_id} from {peer}: refused a message: {err}",
                               session_id=session_id, peer=self._peer, err=error.code)
                self.factory.errors[error.code] = self.factory.errors.get(error.code, 0) + 1
                value = error.reply(session_id)
            entry[0] = value
            self._flush()

        result.addBoth(settle)

    def _flush(self):
        ready, sending = [], self.state == self.STATE_OPEN
        while self._outbox and self._outbox[0][0] is not None:
            reply, size = self._outbox.popleft()
            self.factory.budget.release(size)
            if sending:
                if reply.get("type") == "ack" and "count" in reply:
                    self.factory.acks += 1
                ready.append(messages.encode(reply))
        if ready:
            self.send_texts(ready)

    def _stream_lost(self, error: ProtocolError, size: int):
        """A zstd-stream frame whose body could not be read breaks the stream: later frames cannot be read
        either.  Close, saying why in the close reason (an error reply would go out ahead
        of the replies still due, and be taken for one of them); the client resumes on a new connection."""
        self.factory.budget.release(size)
        self.factory.errors[error.code] = self.factory.errors.get(error.code, 0) + 1
        if self.state == self.STATE_OPEN:  # (frames that arrive while it closes are refused unread, unlogged)
            self._log.info("upload connection from {peer}: unreadable zstd-stream frame ({detail}); closing",
                           peer=self._peer, detail=error.detail)
            self._fail_connection(self.CLOSE_STATUS_CODE_INVALID_PAYLOAD,
                                  f"unreadable packed frame ({error.code}); reconnect and resume")

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        self.factory.errors[TOO_LARGE] = self.factory.errors.get(TOO_LARGE, 0) + 1
        error = ProtocolError(TOO_LARGE, f"message of {msg_size} bytes exceeds the server's limit of {max_msg_size}; "
                                         "send the lines in smaller events batches", limit=max_msg_size)
        if self.state == self.STATE_OPEN:
            self.sendMessage(messages.encode(error.reply(self._session_id)))
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)


@implementer(IPushProducer)
class RepliesWaiting:
    """An upload connection's producer on its transport, paused while more replies wait for the client than
    the transport's buffer holds: its messages then wait unread too.  A client that sends pings, or anything,
    and reads no answer would otherwise fill the daemon's memory with them (55 MB in 5 s of pings)."""

    def __init__(self, protocol: UploadProtocol):
        self.protocol = protocol

    def pauseProducing(self):
        self.protocol.replies_wait(True)

    def resumeProducing(self):
        self.protocol.replies_wait(False)

    def stopProducing(self):
        pass


class UploadFactory(WebSocketServerFactory):
    protocol = UploadProtocol
    _log = Logger()

    def __init__(self, store, clock, max_message_size: int, admit, principal_of=lambda request: ANYONE,
                 budget: InflightBudget | None = None, **kw):
        """`admit(request, protocol)` returns the client's address, or raises `ConnectionDeny` to refuse it;
        `principal_of(request)` is who the client's token stands for; `budget` bounds the bytes of messages
        in flight over all connections (default: 1 GiB)."""
        super().__init__(**kw)
        self.store = store
        self.budget = budget or InflightBudget(DEFAULT_INFLIGHT_BYTES)
        self.clock = clock
        self.admit = admit
        self.principal_of = principal_of
        self.connections: set = set()
        self.messages_in = 0
        self.bytes_in = 0
        self.lines_in = 0
        self.acks = 0
        self.errors: dict[str, int] = {}
        self._budget_logged_at = float("-inf")
        self.streams = 0  # connections holding a zstd-stream (STREAM_CONNECTIONS at most)
        self.setProtocolOptions(maxMessagePayloadSize=max_message_size, maxFramePayloadSize=max_message_size,
                                failByDrop=False)

    def take_stream(self) -> bool:
        """Whether one more connection may keep a zstd stream (about 2.5 MB each); past STREAM_CONNECTIONS,
        connections get frames compressed on their own, which hold nothing between frames."""
        if self.streams >= STREAM_CONNECTIONS:
            return False
        self.streams += 1
        return True

    def budget_full(self):
        """Say so when the memory budget holds connections: at most once a minute, it is normal under load."""
        now = self.clock.seconds()
        if now - self._budget_logged_at >= BUDGET_LOG_INTERVAL:
            self._budget_logged_at = now
            self._log.info("upload budget full ({reserved} of {limit} MiB in flight): {held} connection(s) wait "
                           "for earlier messages to be committed (--max-inflight-mb)",
                           reserved=self.budget.reserved >> 20, limit=self.budget.limit >> 20, held=self.budget.held)
