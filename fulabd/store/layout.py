"""
Where a session's files are and how they are touched: every name is opened,
created, renamed and removed relative to the root folder's descriptor and
without following a symlink, so nothing outside the root is ever written.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from array import array

from fulabd import edn

SAFE_ID_LENGTH = 128
READ_CHUNK = 1 << 20
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
LINES, META, PARS = ".jsonl", ".meta.edn", ".par.edn"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_id(raw: str) -> str:
    """A file-name-safe form of a session id; distinct ids never share files."""
    return _safe_id_cached(raw) if len(raw) <= SAFE_ID_LENGTH else _safe_id(raw)


def _safe_id(raw: str) -> str:
    cleaned = _UNSAFE.sub("_", raw)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    cleaned = cleaned[:SAFE_ID_LENGTH]
    if cleaned != raw or not raw:
        cleaned = f"{cleaned}-{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:8]}"
    return cleaned


# It is asked several times per upload message, for the same few ids; ids of a file name's length only, so
# the cache stays a few MB whatever ids it is asked for.
_safe_id_cached = functools.lru_cache(maxsize=1 << 14)(_safe_id)


class Root:
    """The store's folder, opened once; file operations by name inside it, never through a symlink."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.fd: int | None = None

    def open_folder(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close_folder(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def open(self, name: str, flags: int, mode: int = 0o644) -> int:
        """A descriptor of `name`; ELOOP when it is a symlink."""
        return os.open(name, flags | NO_FOLLOW, mode, dir_fd=self.fd)

    def read(self, name: str) -> bytes | None:
        """The bytes of `name`, or None when there is no such file."""
        try:
            fd = self.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with open(fd, "rb") as f:
            return f.read()

    def write_atomically(self, name: str, data: bytes) -> None:
        edn.write_atomically(name, data, dir_fd=self.fd)

    def write_all_atomically(self, files: list[tuple[str, bytes]]) -> list[Exception | None]:
        return edn.write_all_atomically(files, dir_fd=self.fd)

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def remove(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def rename(self, old: str, new: str) -> None:
        os.replace(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def entries(self) -> list[os.DirEntry]:
        with os.scandir(self.fd) as entries:
            return sorted(entries, key=lambda entry: entry.name)

    def writable(self) -> bool:
        return os.access(self.path, os.W_OK)


def _reader(file: str | int, mode: str = "rb"):
    """A file object over a path or over a descriptor the caller keeps."""
    return open(file, mode, closefd=not isinstance(file, int))


def cut_torn_tail(file: str | int) -> int:
    """Cut a last line that has no newline (left by a crash mid-write); the bytes cut."""
    with _reader(file, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        position = size
        while position > 0:
            start = max(0, position - READ_CHUNK)
            f.seek(start)
            chunk = f.read(position - start)
            if position == size and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def ends_with_newline(fd: int, size: int) -> bool:
    """Whether the file's byte `size - 1` is a newline (an empty file counts as whole)."""
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def count_lines(file: str | int) -> int:
    count = 0
    with _reader(file) as f:
        f.seek(0)
        while chunk := f.read(READ_CHUNK):
            count += chunk.count(b"\n")
    return count


def line_ends(file: str | int, size: int) -> array:
    """The offset just past each line's newline, for the first `size` bytes of the file."""
    ends = array("q")
    if size == 0:
        return ends
    with _reader(file) as f:
        f.seek(0)
        offset = 0
        while offset < size:
            chunk = f.read(min(READ_CHUNK, size - offset))
            if not chunk:
                break
            position = chunk.find(b"\n")
            while position >= 0:
                ends.append(offset + position + 1)
                position = chunk.find(b"\n", position + 1)
            offset += len(chunk)
    return ends
