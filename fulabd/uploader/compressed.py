"""
Compressed session files: Codex compresses old rollouts to `<name>.jsonl.zst`.

Their decompressed lines are uploaded, byte for byte, as the session the
uncompressed file was (same session id).  Such a file does not grow, so it is
read once and not followed.  When both `x.jsonl` and `x.jsonl.zst` exist, the
uncompressed one is the session (it may still be written to) and the
compressed one is left alone until the other is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

import zstandard

PLAIN = ".jsonl"
COMPRESSED = ".jsonl.zst"


def is_session_file(name: str) -> bool:
    return name.endswith(PLAIN) or name.endswith(COMPRESSED)


def is_compressed(path) -> bool:
    return os.fspath(path).endswith(COMPRESSED)


def session_stem(path: Path) -> str:
    """The file's name without `.jsonl` or `.jsonl.zst`: the same for both forms of a session."""
    name = Path(path).name
    return name[:-len(COMPRESSED)] if name.endswith(COMPRESSED) else Path(path).stem


def shadowed(path) -> bool:
    """A compressed file whose uncompressed form is there too: that one is the session."""
    path = os.fspath(path)
    return is_compressed(path) and os.path.exists(path[:-len(".zst")])


class Unreadable(Exception):
    """A compressed file that does not decompress (damaged, or still being written)."""


class Decompressed:
    """A file's decompressed bytes, read forward; seeking back starts over from the file's start.

    One is kept by a reader between its reads, so reading a file batch by
    batch decompresses it once, not once per batch.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._reader = None
        self._position = 0

    def _start(self):
        self.close()
        self._reader = zstandard.ZstdDecompressor().stream_reader(open(self.path, "rb"), read_across_frames=True)
        self._position = 0

    def seek(self, offset: int):
        if self._reader is None or offset < self._position:
            self._start()
        try:
            self._reader.seek(offset)
        except zstandard.ZstdError as e:
            raise Unreadable(f"{self.path} does not decompress: {e}") from None
        self._position = offset

    def read(self, size: int = -1) -> bytes:
        if self._reader is None:
            self._start()
        try:
            data = self._reader.read(size)
        except zstandard.ZstdError as e:
            raise Unreadable(f"{self.path} does not decompress: {e}") from None
        self._position += len(data)
        return data

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_content(path):
    """A session file's lines as bytes: decompressed if it is compressed."""
    return Decompressed(path) if is_compressed(path) else open(path, "rb")
