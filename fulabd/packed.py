"""
Packed uploads: an `init` or `events` message as one binary frame, a JSON
header line followed by the session's raw lines compressed with zstd.

Why: a JSON text frame costs the daemon UTF-8 validation and JSON decoding of
every byte, and crosses a laptop's uplink uncompressed; agent transcripts
compress about fivefold with zstd at a few hundred MB/s, several times the
speed and ratio of permessage-deflate, and a packed line is stored byte for
byte whatever its encoding.  A client sends packed frames only on a connection
whose handshake response carried `Fulab-Packed: zstd`, so old servers never
see one, and old clients, which never ask, never get anything new.

With `Fulab-Packed: zstd-stream`, a connection's frames are one zstd stream,
cut at block boundaries: each frame's body is the next piece, holding its
lines whole and free to refer to the 2 MiB of lines before it (keys, file
contents read again), at no more cost to the encoder than compressing alone.
The bench's varied 100 MB session is 20.0 MB at level 3 against 23.2 MB with
each frame alone.  It costs the daemon about 2.5 MB per connection (a 2 MiB
window and zstd's buffers), so it grants it to STREAM_CONNECTIONS at most.

Both ends use this module: `fulab-upload` to encode, the daemon to decode.
"""

from __future__ import annotations

import dataclasses
import io
import time

import orjson
import zstandard

from fulabd import messages
from fulabd.messages import BAD_MESSAGE, TOO_LARGE, UNKNOWN_TYPE, ProtocolError

HEADER = "Fulab-Packed"  # request header: the encodings a client can send; response header: the one agreed
ENCODING = "zstd"        # each frame's body compressed on its own
STREAMED = "zstd-stream"  # the connection's frames are the pieces of one zstd stream
STREAM_WINDOW_LOG = 21    # a stream's window: 2 MiB of earlier lines, which the daemon holds per connection
LEVELS = (3, 6, 9)  # an encoder's levels: up while its link, not its CPU, is what it waits for
LEVEL = LEVELS[0]
MAX_WINDOW = 8 << 20  # a frame declaring a larger zstd window is refused, so a frame cannot make us allocate more
READ_CHUNK = 1 << 20
BLOCK = 128 << 10     # zstd's largest block, which 4 bytes of input (an RLE block) may expand to
OVERSHOOT_BLOCKS = 64  # blocks a stream's piece may inflate past the limit before it is refused (8 MiB)


def encodings(value: str | None) -> list[str]:
    """The encodings named in a `Fulab-Packed` header value, in its order."""
    return [part.strip().lower() for part in (value or "").split(",") if part.strip()]


class Packer:
    """Encodes messages for one connection (`stream`: the server agreed to `zstd-stream`).

    Its level adapts as zstd's own `--adapt` does: while compressing takes under 30 % of the time between
    frames (the link or the server is what the uploader waits for), the level up costs nothing felt and sends
    fewer bytes; over 70 %, it comes down again.  In a stream, a new level starts a new zstd frame (the level
    of a frame is fixed), which ends the last one with its checksum."""

    def __init__(self, stream: bool = False, clock=time.perf_counter):
        self.stream = stream
        self.clock = clock
        self.level = LEVEL
        self._last: float | None = None
        self._compressors: dict[int, zstandard.ZstdCompressor] = {}  # by level
        self._piece: zstandard.ZstdCompressionObj | None = None  # the stream's current frame
        self._piece_level = 0

    def encode(self, header: dict, lines: list[bytes]) -> bytes:
        body = b"\n".join([*lines, b""])  # one copy of the lines, none of each line
        started = self.clock()
        compressed = self._next_piece(body) if self.stream else self._compressor().compress(body)
        self._adapt(started, self.clock())
        return orjson.dumps(header) + b"\n" + compressed

    def _next_piece(self, body: bytes) -> bytes:
        ended = b""
        if self._piece is not None and self._piece_level != self.level:
            ended = self._piece.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
            self._piece = None
        if self._piece is None:
            self._piece, self._piece_level = self._compressor().compressobj(), self.level
        return ended + self._piece.compress(body) + self._piece.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = self._compressors.get(self.level)
        if compressor is None:
            compressor = self._compressors[self.level] = zstandard.ZstdCompressor(
                compression_params=zstandard.ZstdCompressionParameters.from_level(
                    self.level, window_log=STREAM_WINDOW_LOG, write_checksum=1)) if self.stream else \
                zstandard.ZstdCompressor(level=self.level)
        return compressor

    def _adapt(self, started: float, done: float) -> None:
        if self._last is not None and done > self._last:
            busy = (done - started) / (done - self._last)
            step = 1 if busy < 0.3 else -1 if busy > 0.7 else 0
            self.level = LEVELS[min(max(LEVELS.index(self.level) + step, 0), len(LEVELS) - 1)]
        self._last = done


class Unpacker:
    """Decodes one connection's packed frames, in the order they arrived (`stream`: as `zstd-stream`).

    Frames compressed alone get a decompressor each, so an idle connection holds no zstd buffers; a stream's
    decompressor, and its window, lives as long as the connection."""

    def __init__(self, stream: bool = False):
        self._stream = zstandard.ZstdDecompressor(max_window_size=1 << STREAM_WINDOW_LOG).decompressobj(
            read_across_frames=True) if stream else None
        self.broken = False  # a piece of the stream could not be read: nothing after it can be

    def decode(self, payload: bytes, max_size: int) -> messages.Append:
        """The Append a packed frame carries; its lines may hold `max_size` bytes at most once inflated.

        In a stream, the body is inflated before the header is read, so that a bad header is an ordinary error;
        a body that cannot be inflated leaves the stream broken: `StreamLost`, and the caller must end the
        connection (the client starts afresh on its next one)."""
        head, newline, body = payload.partition(b"\n")
        if not newline:
            raise self._lost(BAD_MESSAGE, "a packed frame is a JSON header, a newline, then the zstd-compressed "
                                          "lines")
        if self._stream is None:
            message = parse_header(head)
            raw = inflate(body, max_size)
        else:
            raw = self._inflate_piece(body, max_size)
            message = parse_header(head)
        if raw and not raw.endswith(b"\n"):
            raise self._lost(BAD_MESSAGE, "the packed lines must each end with a newline")
        return dataclasses.replace(message, lines=raw.split(b"\n")[:-1])

    def _inflate_piece(self, body: bytes, max_size: int) -> bytes:
        """The stream's next piece, fed a slice at a time, each too short to pass `max_size` by more than
        OVERSHOOT_BLOCKS blocks however it claims to expand.  zstd's blocks never inflate to less than they
        hold but for a 3-byte header, so a piece with more bytes left than room for its lines is refused at
        once: padding (skippable frames, empty blocks) cannot make the last slices before the limit many."""
        if self.broken:
            raise StreamLost(BAD_MESSAGE, "an earlier packed frame of this connection could not be read")
        out = bytearray()
        start = 0
        try:
            while start < len(body):
                room = max_size - len(out)
                if len(body) - start > room + (room >> 8) + 4096:
                    raise self._lost(TOO_LARGE, too_large(max_size), limit=max_size)
                take = (room // BLOCK + OVERSHOOT_BLOCKS - 2) * 4
                out += self._stream.decompress(body[start:start + take])
                start += take
                if len(out) > max_size:
                    raise self._lost(TOO_LARGE, too_large(max_size), limit=max_size)
        except zstandard.ZstdError as e:
            raise self._lost(BAD_MESSAGE, f"the packed body is not valid zstd data: {e}") from None
        return bytes(out)

    def _lost(self, code: str, detail: str, **extra) -> ProtocolError:
        """A frame that cannot be read; in a stream, the end of it (a piece misframed leaves the next ones out
        of step too)."""
        if self._stream is None:
            return ProtocolError(code, detail, **extra)
        self.broken = True
        return StreamLost(code, detail, **extra)


class StreamLost(ProtocolError):
    """A zstd-stream frame whose body could not be read: what follows on the connection cannot be read either."""


def too_large(max_size: int) -> str:
    return f"packed lines exceed the server's limit of {max_size} bytes once decompressed; send smaller batches"


def parse_header(head: bytes) -> messages.Append:
    """A packed frame's message, without its lines yet."""
    header = messages.decode(head)
    if header.get("type") not in ("init", "events"):
        raise ProtocolError(UNKNOWN_TYPE, "a packed frame carries an init or events message; send others as text")
    if "events" in header:
        raise ProtocolError(BAD_MESSAGE, "a packed frame's lines travel in its compressed body, not in \"events\"")
    return messages.parse_message(dict(header, events=[]))


def inflate(body: bytes, max_size: int) -> bytes:
    """Decompress `body`, holding at most `max_size` + one chunk bytes whatever the frame claims."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    out = bytearray()
    try:
        with decompressor.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            while chunk := reader.read(READ_CHUNK):
                out += chunk
                if len(out) > max_size:
                    raise ProtocolError(TOO_LARGE, too_large(max_size), limit=max_size)
    except zstandard.ZstdError as e:
        raise ProtocolError(BAD_MESSAGE, f"the packed body is not valid zstd data: {e}") from None
    return bytes(out)
