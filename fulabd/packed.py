"""
Packed uploads: an `init` or `events` message as one binary frame, a JSON
header line followed by the session's raw lines compressed with zstd.

Why: a JSON text frame costs the daemon UTF-8 validation and JSON decoding of
every byte, and crosses a laptop's uplink uncompressed; agent transcripts
compress about tenfold with zstd at a few hundred MB/s, several times the
speed and ratio of permessage-deflate, and a packed line is stored byte for
byte whatever its encoding.  A client sends packed frames only on a connection
whose handshake response carried `Fulab-Packed: zstd`, so old servers never
see one, and old clients, which never ask, never get anything new.

With `Fulab-Packed: zstd-history`, each frame's body is compressed with up to
the connection's last MiB of packed lines as a zstd prefix, so that what repeats
from one batch to the next (keys, file contents read again) costs almost
nothing: the bench's 100 MB session is 19.0 MB at level 3 against 22.1 MB
with each frame alone.  It costs the daemon 2 to 3 MiB per connection (the
lines, and the prefix's dictionary), so it grants it to HISTORY_CONNECTIONS
at most.

Both ends use this module: `fulab-upload` to encode, the daemon to decode.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections import deque

import orjson
import zstandard

from fulabd import messages
from fulabd.messages import BAD_MESSAGE, TOO_LARGE, UNKNOWN_TYPE, ProtocolError

HEADER = "Fulab-Packed"  # request header: the encodings a client can send; response header: the one agreed
ENCODING = "zstd"                # each frame's body compressed on its own
WITH_HISTORY = "zstd-history"    # each frame's body compressed with the frames before it on the connection
HISTORY_BYTES = 1 << 20          # of a connection's last packed lines that the next frame may refer to
REFRESH_BYTES = 256 << 10        # of lines after which that prefix is renewed
LEVELS = (3, 6)            # an encoder's levels: 6 while its link, not its CPU, is what it waits for (9 was slower)
LEVEL = LEVELS[0]
MAX_WINDOW = 8 << 20  # a frame declaring a larger zstd window is refused, so a frame cannot make us allocate more
READ_CHUNK = 1 << 20


def encodings(value: str | None) -> list[str]:
    """The encodings named in a `Fulab-Packed` header value, in its order."""
    return [part.strip().lower() for part in (value or "").split(",") if part.strip()]


class History:
    """A connection's packed lines that the next frame may refer to, kept alike at both ends: the last
    HISTORY_BYTES of lines as they stood when the prefix was last renewed.  It is renewed after the frame
    that brings REFRESH_BYTES of lines since the last renewal (renewing a MiB costs a few milliseconds, which a
    stream of one-line frames must not pay on each)."""

    def __init__(self, size: int = HISTORY_BYTES, refresh: int = REFRESH_BYTES):
        self.size = size
        self.refresh = refresh
        self.prefix: bytes | None = None
        self.renewals = 0  # a coder made for one prefix is good until the next
        self._recent: deque[bytes] = deque()
        self._recent_bytes = 0
        self._since = 0

    def add(self, lines: bytes) -> None:
        self._recent.append(lines)
        self._recent_bytes += len(lines)
        self._since += len(lines)
        while self._recent_bytes - len(self._recent[0]) >= self.size:
            self._recent_bytes -= len(self._recent.popleft())
        if self._since >= self.refresh:
            data = b"".join(self._recent)[-self.size:]
            self._recent = deque([data])
            self._recent_bytes = len(data)
            self.prefix = data
            self.renewals += 1
            self._since = 0


class Packer:
    """Encodes messages for one connection (`history`: the server agreed to `zstd-history`).

    Its level adapts as zstd's own `--adapt` does: while compressing takes under 30 % of the time between
    frames (the link or the server is what the uploader waits for), the level up costs nothing felt and sends
    fewer bytes; over 70 %, it comes down again."""

    def __init__(self, history: bool = False, clock=time.perf_counter):
        self.history = History() if history else None
        self.clock = clock
        self.level = LEVEL
        self._last: float | None = None
        self._compressors: dict[tuple[int, int], zstandard.ZstdCompressor] = {}  # by (renewal, level)

    def encode(self, header: dict, lines: list[bytes]) -> bytes:
        body = b"\n".join([*lines, b""])  # one copy of the lines, none of each line
        started = self.clock()
        compressed = self._compressor().compress(body)
        if self.history is not None:
            self.history.add(body)
        self._adapt(started, self.clock())
        return orjson.dumps(header) + b"\n" + compressed

    def _compressor(self) -> zstandard.ZstdCompressor:
        key = (self.history.renewals if self.history is not None else 0, self.level)
        compressor = self._compressors.get(key)
        if compressor is None:
            self._compressors = {k: c for k, c in self._compressors.items() if k[0] == key[0]}
            prefix = as_dictionary(self.history.prefix) if self.history is not None else None
            if prefix is not None:
                prefix.precompute_compress(level=self.level)  # once, not at every frame
            # A checksum, with history: a frame read against another history fails instead of yielding other lines.
            compressor = self._compressors[key] = zstandard.ZstdCompressor(
                level=self.level, dict_data=prefix, write_checksum=self.history is not None)
        return compressor

    def _adapt(self, started: float, done: float) -> None:
        if self._last is not None and done > self._last:
            busy = (done - started) / (done - self._last)
            step = 1 if busy < 0.3 else -1 if busy > 0.7 else 0
            self.level = LEVELS[min(max(LEVELS.index(self.level) + step, 0), len(LEVELS) - 1)]
        self._last = done


class Unpacker:
    """Decodes one connection's packed frames, in the order they arrived (`history`: as `zstd-history`).

    A decompressor is made for each frame, so an idle connection holds no zstd buffers; only the prefix's
    dictionary is kept between frames, until the history renews it."""

    def __init__(self, history: bool = False):
        self.history = History() if history else None
        self._prefix: zstandard.ZstdCompressionDict | None = None
        self._renewals = 0

    def decode(self, payload: bytes, max_size: int) -> messages.Append:
        """The Append a packed frame carries; its lines may hold `max_size` bytes at most once inflated.

        With history, the body is inflated, and taken by the history, before the header is read, so that a
        bad header is an ordinary error; a body that cannot be inflated leaves the two ends' histories apart:
        `HistoryLost`, and the caller must end the connection (the client starts afresh on its next one)."""
        head, newline, body = payload.partition(b"\n")
        if not newline:
            raise self._lost(BAD_MESSAGE, "a packed frame is a JSON header, a newline, then the zstd-compressed "
                                          "lines")
        if self.history is None:
            message = parse_header(head)
            raw = inflate(body, max_size, None)
        else:
            raw = self._inflate_with_history(body, max_size)
            message = parse_header(head)
        if raw and not raw.endswith(b"\n"):
            raise ProtocolError(BAD_MESSAGE, "the packed lines must each end with a newline")
        return dataclasses.replace(message, lines=raw.split(b"\n")[:-1])

    def _inflate_with_history(self, body: bytes, max_size: int) -> bytes:
        if self.history.renewals != self._renewals:
            self._renewals = self.history.renewals
            self._prefix = as_dictionary(self.history.prefix)
        try:
            if not zstandard.get_frame_parameters(body).has_checksum:
                raise ProtocolError(BAD_MESSAGE, "a zstd-history frame must carry a content checksum")
            raw = inflate(body, max_size, self._prefix)
        except ProtocolError as e:
            raise HistoryLost(e.code, e.detail, **e.extra) from None
        except zstandard.ZstdError as e:
            raise HistoryLost(BAD_MESSAGE, f"the packed body is not valid zstd data: {e}") from None
        self.history.add(raw)
        return raw

    def _lost(self, code: str, detail: str) -> ProtocolError:
        return (HistoryLost if self.history is not None else ProtocolError)(code, detail)


class HistoryLost(ProtocolError):
    """A zstd-history frame whose body could not be read: the connection's two histories are now apart."""


def as_dictionary(prefix: bytes | None) -> zstandard.ZstdCompressionDict | None:
    return zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if prefix else None


def parse_header(head: bytes) -> messages.Append:
    """A packed frame's message, without its lines yet."""
    header = messages.decode(head)
    if header.get("type") not in ("init", "events"):
        raise ProtocolError(UNKNOWN_TYPE, "a packed frame carries an init or events message; send others as text")
    if "events" in header:
        raise ProtocolError(BAD_MESSAGE, "a packed frame's lines travel in its compressed body, not in \"events\"")
    return messages.parse(orjson.dumps(dict(header, events=[])))


def inflate(body: bytes, max_size: int, prefix: zstandard.ZstdCompressionDict | None) -> bytes:
    """Decompress `body`, holding at most `max_size` + one chunk bytes whatever the frame claims."""
    decompressor = zstandard.ZstdDecompressor(dict_data=prefix, max_window_size=MAX_WINDOW)
    out = bytearray()
    try:
        with decompressor.stream_reader(io.BytesIO(body), read_across_frames=True) as reader:
            while chunk := reader.read(READ_CHUNK):
                out += chunk
                if len(out) > max_size:
                    raise ProtocolError(TOO_LARGE, f"packed lines exceed the server's limit of {max_size} bytes "
                                                   "once decompressed; send smaller batches", limit=max_size)
    except zstandard.ZstdError as e:
        raise ProtocolError(BAD_MESSAGE, f"the packed body is not valid zstd data: {e}") from None
    return bytes(out)
