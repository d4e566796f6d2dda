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

Both ends use this module: `fulab-upload` to encode, the daemon to decode.
"""

from __future__ import annotations

import dataclasses
import io

import orjson
import zstandard

from fulabd import messages
from fulabd.messages import BAD_MESSAGE, TOO_LARGE, UNKNOWN_TYPE, ProtocolError

HEADER = "Fulab-Packed"  # request header: the encodings a client can send; response header: the one agreed
ENCODING = "zstd"
LEVEL = 3
MAX_WINDOW = 8 << 20  # a frame declaring a larger zstd window is refused, so a frame cannot make us allocate more
READ_CHUNK = 1 << 20


def offered(value: str | None) -> bool:
    """Whether a `Fulab-Packed` header value names our encoding."""
    return value is not None and ENCODING in (part.strip().lower() for part in value.split(","))


class Packer:
    """Encodes messages for one connection (a zstd compressor is not shared between threads)."""

    def __init__(self, level: int = LEVEL):
        self._compressor = zstandard.ZstdCompressor(level=level)

    def encode(self, header: dict, lines: list[bytes]) -> bytes:
        body = b"\n".join([*lines, b""])  # one copy of the lines, none of each line
        return orjson.dumps(header) + b"\n" + self._compressor.compress(body)


def decode(payload: bytes, max_size: int) -> messages.Append:
    """The Append a packed frame carries; its lines may hold `max_size` bytes at most once inflated."""
    head, newline, body = payload.partition(b"\n")
    if not newline:
        raise ProtocolError(BAD_MESSAGE, "a packed frame is a JSON header, a newline, then the zstd-compressed lines")
    header = messages.decode(head)
    if header.get("type") not in ("init", "events"):
        raise ProtocolError(UNKNOWN_TYPE, "a packed frame carries an init or events message; send others as text")
    if "events" in header:
        raise ProtocolError(BAD_MESSAGE, "a packed frame's lines travel in its compressed body, not in \"events\"")
    message = messages.parse(orjson.dumps(dict(header, events=[])))
    raw = inflate(body, max_size)
    if raw and not raw.endswith(b"\n"):
        raise ProtocolError(BAD_MESSAGE, "the packed lines must each end with a newline")
    return dataclasses.replace(message, lines=raw.split(b"\n")[:-1])


def inflate(body: bytes, max_size: int) -> bytes:
    """Decompress `body`, holding at most `max_size` + one chunk bytes whatever the frame claims."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
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
