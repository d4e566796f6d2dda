"""
EDN files as the old Clojure lab reads them: maps with keyword keys, written atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence, Set
from typing import Any

import edn_format
from edn_format import Keyword


_NAME = r"[A-Za-z_*!?<>=][A-Za-z0-9_*!?<>=.#:+-]*"
_KEYWORD = re.compile(rf"{_NAME}(/{_NAME})?")


def keyword_or_string(text: str) -> Keyword | str:
    """`text` as a keyword when it makes one that reads back; otherwise it stays a string."""
    name = text[1:] if text.startswith(":") else text
    return Keyword(name) if _KEYWORD.fullmatch(name) else text


def to_edn(value: Any, keyword_values: frozenset = frozenset()) -> Any:
    """Python/JSON data to EDN data: every map key becomes a keyword (when it can be one).

    String items of the lists named in `keyword_values` (e.g. PAR `tags`)
    become keywords too.
    """
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            item = to_edn(item, keyword_values)
            if key in keyword_values and isinstance(item, (list, tuple)):
                item = [keyword_or_string(x) if isinstance(x, str) else x for x in item]
            converted[keyword_or_string(str(key))] = item
        return converted
    if isinstance(value, (list, tuple)):
        return [to_edn(item, keyword_values) for item in value]
    return value


def from_edn(value: Any) -> Any:
    """EDN data back to plain Python: keywords become their names (without `:`)."""
    if isinstance(value, Keyword):
        return value.name
    if isinstance(value, Mapping):
        return {from_edn(key): from_edn(item) for key, item in value.items()}
    if isinstance(value, (Sequence, Set)) and not isinstance(value, (str, bytes)):
        return [from_edn(item) for item in value]
    return value


def dumps(value: Any, keyword_values: frozenset = frozenset()) -> bytes:
    return edn_format.dumps(to_edn(value, keyword_values), sort_keys=True).encode("utf-8")


def loads(data: bytes) -> Any:
    return from_edn(edn_format.loads(data.decode("utf-8")))


def write_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a torn one."""
    directory = os.path.dirname(path) or "."
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(directory)


def write_all_atomically(files: list[tuple[str, bytes]]) -> list[OSError | None]:
    """`write_atomically` for many files, with one directory fsync per folder; one error (or None) per file."""
    errors, directories = [], set()
    for path, data in files:
        try:
            temporary = f"{path}.tmp"
            with open(temporary, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
            directories.add(os.path.dirname(path) or ".")
            errors.append(None)
        except OSError as e:
            errors.append(e)
    for directory in directories:
        fsync_directory(directory)
    return errors


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
