"""
Whole data frames, read in one step.

Autobahn reads a frame in about a dozen Python calls (header, a masker object,
frame begin, data and end, message begin and end, a UTF-8 validator object),
which at 10,000 upload messages a second took 60 % of the reactor's time, more
than storing and acknowledging them.  Nearly every upload message is one
masked frame with no extension bits, and under load nearly every one is all
in the buffer when its header is read: `WholeFrames.processData` reads such a
frame itself, with the same checks, the same limits and the same memory budget,
one unmasking and one UTF-8 check, then `onMessage`.  All else (a frame still
arriving, control frames, fragments, compressed frames, frames over a limit,
errors, a closing connection) is left to Autobahn's own `processData`, which
stays the reference for the protocol.
"""

from __future__ import annotations

import os

from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet import tcp

SMALL_FRAME = 256  # payloads up to this are unmasked with one integer XOR (0.9 us at 300 B, 2.5 at 1 KB, 16 at 8 KB)
TEXT, BINARY = 0x81, 0x82  # first header byte of an unfragmented data frame with no extension bits
MASKED = 0x80


def xor_small(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    key = (mask * ((size >> 2) + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def xor_with_autobahn(payload: bytes, mask: bytes) -> bytes:
    """Autobahn's masker object: about 2.7 us a call up to 8 KB, most of it the object (and an import)."""
    return create_xor_masker(mask, len(payload)).process(payload)


def compiled_xor():
    """The compiled loop beneath Autobahn's masker, called as it is (0.9 us for 300 B to 2 KB, 1.1 at 8 KB), if
    this Autobahn has it and it agrees with the integer XOR on a test vector; else its masker object."""
    try:
        from _nvx_xormasker import ffi, lib
    except ImportError:
        return xor_with_autobahn

    def xor(payload: bytes, mask: bytes) -> bytes:
        out = bytearray(payload)
        masker = lib.nvx_xormask_new(mask)
        try:
            lib.nvx_xormask_process(masker, ffi.from_buffer(out), len(out))
        finally:
            lib.nvx_xormask_free(masker)
        return bytes(out)

    vector, mask = bytes(range(256)) * 5, b"\x9c\x01\xfe\x42"
    try:
        agrees = xor(vector[1:], mask) == xor_small(vector[1:], mask)
    except Exception:
        agrees = False
    return xor if agrees else xor_with_autobahn


xor_large = compiled_xor()


def unmask(payload: bytes, mask: bytes) -> bytes:
    return xor_small(payload, mask) if len(payload) <= SMALL_FRAME else xor_large(payload, mask)


def frame_header(data: bytes, at: int = 0) -> tuple[int, int] | None:
    """(header length, payload length) of the whole, masked data frame at `data[at:]`, once its header is
    buffered and its length minimally encoded; else None (Autobahn's to read, or to refuse)."""
    if len(data) - at < 6 or data[at] not in (TEXT, BINARY) or not data[at + 1] & MASKED:
        return None
    length = data[at + 1] & 0x7F
    if length < 126:
        return 6, length
    if length == 126:
        length = int.from_bytes(data[at + 2:at + 4], "big")
        return (8, length) if length >= 126 and len(data) - at >= 8 else None
    length = int.from_bytes(data[at + 2:at + 10], "big")
    return (14, length) if 65536 <= length < 1 << 63 and len(data) - at >= 14 else None


def data_frame(payload: bytes, binary: bool = False, mask: bytes | None = None) -> bytes:
    """One whole message as one frame; masked with `mask` if given (a client's frames are, a server's not)."""
    if mask is not None and len(mask) != 4:
        raise ValueError("a WebSocket masking key is 4 bytes")
    size, first, masked = len(payload), BINARY if binary else TEXT, MASKED if mask else 0
    if size < 126:
        head = bytes((first, masked | size))
    elif size < 65536:
        head = bytes((first, masked | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, masked | 127)) + size.to_bytes(8, "big")
    return head + mask + unmask(payload, mask) if mask else head + payload


def write_whole(protocol, payloads: list[bytes], binary: bool = False):
    """Send messages on an open Autobahn `protocol`, one frame each, in one write, as its `sendMessage` would
    one by one (which costs about as much per small message as reading one); left to it where compression,
    fragmenting, logging, a send queue, the message limit or a connection not open apply.  A client's frames
    are masked with keys from `os.urandom`, as RFC 6455 asks."""
    if protocol.state != protocol.STATE_OPEN or protocol._perMessageCompress is not None \
            or protocol.autoFragmentSize or protocol.send_queue or protocol.logFrames or protocol.logOctets \
            or protocol.trackedTimings or 0 < protocol.maxMessagePayloadSize < max(map(len, payloads), default=0):
        for payload in payloads:
            protocol.sendMessage(payload, isBinary=binary)
        return
    client = not protocol.factory.isServer
    data = b"".join(data_frame(payload, binary, os.urandom(4) if client else None) for payload in payloads)
    size = sum(map(len, payloads))
    stats = protocol.trafficStats
    stats.outgoingWebSocketMessages += len(payloads)
    stats.outgoingWebSocketFrames += len(payloads)
    stats.outgoingOctetsAppLevel += size
    stats.outgoingOctetsWebSocketLevel += size
    stats.outgoingOctetsWireLevel += len(data)
    write_now(protocol.transport, data)


def write_now(transport, data: bytes) -> None:
    """`transport.write(data)`, but sent at once when a plain TCP transport has nothing waiting to be sent.

    Twisted's `write` always buffers, and sends on the reactor's next turn, registering the socket for writing
    and then unregistering it (two `epoll_ctl` calls and a turn of delay for every reply).  What the socket does
    not take at once, and anything on a transport that is TLS or has bytes waiting, goes through `write`, in
    order."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False) and transport.connected \
            and not transport.disconnecting and not transport._writeDisconnected and not transport._tempDataLen \
            and transport.offset == len(transport.dataBuffer):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # (else the connection is lost: `write` buffers it and the reactor finds out)
            data = data[sent:]
    if data:
        transport.write(data)


class WholeFrames:
    """A mixin for a `WebSocketServerProtocol` whose messages are mostly one frame each.

    `frame_begins(length)` is asked once per data frame, whichever reads it, when its header is read (not
    once the connection is failing); it returns False to stop reading until the protocol reads its buffer
    again.
    """

    _whole_frame: tuple[int, int] | None = None  # (header, payload length) of a whole frame held by frame_begins
    _granted = False  # that frame was let in, but the connection began closing first: Autobahn reads it

    def frame_begins(self, length: int) -> bool:
        return True

    def onMessageFrameBegin(self, length):
        super().onMessageFrameBegin(length)
        if self._granted:
            self._granted = False
        elif not self.failedByMe:
            self.frame_begins(length)

    def send_texts(self, payloads: list[bytes]):
        write_whole(self, payloads)

    def processData(self):
        """Every whole frame buffered, in one call; the buffer is cut once, when the call ends however it ends
        (cutting it after each frame copied the rest of a read each time; not cutting it before an exception
        would read those frames again).  A frame not yet all here is Autobahn's, which reads its payload as it
        comes: waiting for it would copy the growing buffer at every read (a 60 MB frame in 64 KiB reads, or a
        small one trickled a byte at a time, would cost gigabytes of copying)."""
        if self.state != self.STATE_OPEN or self.current_frame is not None or self.inside_message \
                or self.logFrames or self.trackedTimings or not self.applyMask:
            self._granted = self._whole_frame is not None
            self._whole_frame = None
            return super().processData()
        data, start = self.data, 0
        try:
            while True:
                frame = self._whole_frame or frame_header(data, start)
                if frame is None:
                    break
                header, length = frame
                end = start + header + length
                if self._whole_frame is None:
                    if len(data) < end or 0 < self.maxFramePayloadSize < length \
                            or 0 < self.maxMessagePayloadSize < length:
                        break  # Autobahn reads a frame still arriving as it comes, or refuses it
                    self._whole_frame = frame
                    if not self.frame_begins(length):
                        return False
                self._whole_frame = None
                binary = data[start] == BINARY
                payload = unmask(data[end - length:end], data[end - length - 4:end - length]) if length else b""
                start = end
                self._deliver(payload, binary)
                if self.state != self.STATE_OPEN:
                    return len(data) > start
                if self.reading_stopped():
                    return False  # the rest waits in the buffer until the protocol reads on
        finally:
            self.data = data[start:]
        return super().processData()

    def reading_stopped(self) -> bool:
        """Whether the protocol has stopped reading (it says so again from its own `processData`)."""
        return False

    def _deliver(self, payload: bytes, binary: bool):
        """One whole message, counted as Autobahn counts it, or refused as it refuses invalid UTF-8: a close
        frame with 1007, then the end of the connection."""
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += len(payload)
        stats.incomingOctetsAppLevel += len(payload)
        if not binary and self.utf8validateIncoming:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as e:
                self._invalid_payload(f"encountered invalid UTF-8 in a text message at payload octet {e.start}")
                self.dropConnection(abort=False)
                return
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self._onMessage(payload, binary)
