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
STEP = 1 << 16  # decompressed bytes asked of zstd at a time: at damage, at most this much readable data is lost
RECENT = 2 << 20  # decompressed bytes kept for a seek back (a reader's read goes at most 1 MiB past its lines)


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


class Unfinished(Unreadable):
    """A compressed file that ends inside a frame: read again once it changes, as a file that cannot be read."""


SKIPPABLE = 0x184D2A50  # the magic number of a skippable frame, its low 4 bits free
FRAME_HEADER_MOST = 18  # bytes


def ends_whole(path: str) -> bool:
    """Whether the file ends where a zstd frame does, read from the frames' headers and their blocks' (nothing
    is decompressed: zstd's stream reader ends a frame cut short as if it were the end of the file)."""
    with open(path, "rb") as f:
        size, at = os.fstat(f.fileno()).st_size, 0
        while at < size:
            f.seek(at)
            head = f.read(FRAME_HEADER_MOST)
            if len(head) >= 8 and int.from_bytes(head[:4], "little") & ~0xF == SKIPPABLE:
                at += 8 + int.from_bytes(head[4:8], "little")
                continue
            try:
                at += zstandard.frame_header_size(head)
                checksum = zstandard.get_frame_parameters(head).has_checksum
            except zstandard.ZstdError:
                return False
            last = False
            while not last:
                f.seek(at)
                block = f.read(3)
                if len(block) < 3:
                    return False
                header = int.from_bytes(block, "little")  # last block: bit 0; type: bits 1-2; size: the rest
                last, rle = bool(header & 1), (header >> 1) & 3 == 1
                at += 3 + (1 if rle else header >> 3)
            at += 4 if checksum else 0
        return at == size


class Decompressed:
    """A file's decompressed bytes, read forward.

    One is kept by a reader between its reads, so reading a file batch by
    batch decompresses it once, not once per batch: a seek back into the
    last `RECENT` bytes is served from memory (a reader reads a little past
    the lines it returns), and only a seek further back starts over.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._reader = None
        self._position = 0      # bytes decompressed so far
        self._recent = bytearray()  # the last of them (RECENT to twice as many), ending at _position
        self._pending = b""     # the part of _recent after the position a seek went back to
        self._damage: Unreadable | None = None

    def _start(self):
        self.close()
        self._reader = zstandard.ZstdDecompressor().stream_reader(open(self.path, "rb"), read_across_frames=True)
        self._position, self._recent, self._pending, self._damage = 0, bytearray(), b"", None

    def seek(self, offset: int):
        if self._reader is not None and self._position - len(self._recent) <= offset <= self._position:
            self._pending = bytes(self._recent[len(self._recent) - (self._position - offset):])
            return
        if self._reader is None or offset < self._position:
            self._start()
        try:
            self._reader.seek(offset)
        except zstandard.ZstdError as e:
            raise Unreadable(f"{self.path} does not decompress: {e}") from None
        self._position, self._recent, self._pending = offset, bytearray(), b""

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all with -1); at damage, what came before it, and Unreadable on the next call."""
        if self._reader is None:
            self._start()
        out = bytearray(self._pending[:size] if size >= 0 else self._pending)
        self._pending = self._pending[len(out):]
        if self._damage is not None and not out:
            raise self._damage
        while self._damage is None and (size < 0 or len(out) < size):
            try:
                data = self._reader.read(STEP if size < 0 else min(STEP, size - len(out)))
            except zstandard.ZstdError as e:
                self._damage = Unreadable(f"{self.path} does not decompress: {e}")
                if out:
                    break
                raise self._damage from None
            if not data:  # zstd's reader ends a frame cut short without a word: the file is asked
                if not ends_whole(self.path):
                    self._damage = Unfinished("it ends inside a zstd frame: it is still being written, or was cut "
                                              "short")
                    if not out:
                        raise self._damage
                break
            out += data
            self._position += len(data)
            self._recent += data
            if len(self._recent) > 2 * RECENT:
                del self._recent[:-RECENT]
        return bytes(out)

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
