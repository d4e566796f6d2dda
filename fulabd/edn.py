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


def keyword_or_string(text: str, written_as_keyword: bool = False) -> Keyword | str:
    """`text` as a keyword when it makes one that reads back as this name (Clojure's reader refuses a name
    that ends in `:` or holds `::`, and a namespace that ends in `:`); otherwise it stays a string.
    `written_as_keyword`: a leading `:` is EDN spelling (a tag `:flaky` is the tag `flaky`), not part of the
    name; a map key keeps it, so that the keys `k` and `:k` stay two keys."""
    name = text[1:] if written_as_keyword and text.startswith(":") else text
    if _KEYWORD.fullmatch(name) and not name.endswith(":") and "::" not in name and ":/" not in name:
        return Keyword(name)
    return text


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
                item = [keyword_or_string(x, written_as_keyword=True) if isinstance(x, str) else x for x in item]
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
    """EDN bytes to plain Python (keywords as names).

    The sidecars this daemon writes use a small part of EDN (maps, vectors,
    keywords, strings, numbers, true/false/nil), read here directly; anything
    else (tags such as #inst, sets, lists, symbols) goes to edn_format, which
    is about 6 ms per file because it builds its lexer on every call: at
    start-up, 100,000 metas would take minutes.
    """
    text = data.decode("utf-8")
    try:
        value, end = _read(text, _skip(text, 0))
        if _skip(text, end) == len(text):
            return value
    except _NotSimple:
        pass
    return from_edn(edn_format.loads(text))


class _NotSimple(Exception):
    """Beyond the part of EDN read directly: hand it to edn_format."""


_SPACE = re.compile(r"(?:[\s,]|;[^\n]*)*")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_NUMBER = re.compile(r"[-+]?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?(?=[\s,\]\})]|$)")
_WORD = re.compile(r"[A-Za-z_*!?<>=:.+-][A-Za-z0-9_*!?<>=.#:+/-]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "\\": "\\", "/": "/"}
_CONSTANTS = {"true": True, "false": False, "nil": None}


def _skip(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()


def _read(text: str, position: int) -> tuple[Any, int]:
    if position >= len(text):
        raise _NotSimple
    char = text[position]
    if char in "{[":
        close = "}" if char == "{" else "]"
        items, position = [], _skip(text, position + 1)
        while position < len(text) and text[position] != close:
            item, position = _read(text, position)
            items.append(item)
            position = _skip(text, position)
        if position >= len(text):
            raise _NotSimple
        if close == "]":
            return items, position + 1
        if len(items) % 2:
            raise _NotSimple
        try:
            mapping = dict(zip(items[::2], items[1::2]))
        except TypeError:
            raise _NotSimple from None
        if len(mapping) * 2 != len(items):
            raise _NotSimple
        return mapping, position + 1
    if char == '"':
        match = _STRING.match(text, position)
        if match is None:
            raise _NotSimple
        return _unescape(match.group(1)), match.end()
    match = _NUMBER.match(text, position)
    if match:
        number = match.group(0)
        return (float(number) if match.group(1) or match.group(2) else int(number)), match.end()
    match = _WORD.match(text, position)
    if match:
        word = match.group(0)
        if word in _CONSTANTS:
            return _CONSTANTS[word], match.end()
        if word.startswith(":") and len(word) > 1 and not word.startswith("::"):
            return word[1:], match.end()
    raise _NotSimple


def _unescape(body: str) -> str:
    if "\\" not in body:
        return body
    out, position = [], 0
    while True:
        slash = body.find("\\", position)
        if slash < 0:
            out.append(body[position:])
            return "".join(out)
        out.append(body[position:slash])
        code = body[slash + 1]
        if code == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[slash + 2:slash + 6]):
            out.append(chr(int(body[slash + 2:slash + 6], 16)))
            position = slash + 6
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
            position = slash + 2
        else:
            raise _NotSimple


def write_atomically(path: str, data: bytes, dir_fd: int | None = None) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a torn one.

    With `dir_fd`, `path` is a name in that folder. The temporary file is made
    afresh (a leftover or a symlink in its place is removed first, never
    followed) and the rename replaces a symlink at `path` rather than writing
    through it.
    """
    _write_temporary(path, data, dir_fd)
    os.replace(f"{path}.tmp", path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    fsync_directory(os.path.dirname(path) or ".", dir_fd)


def write_all_atomically(files: list[tuple[str, bytes]], dir_fd: int | None = None) -> list[Exception | None]:
    """`write_atomically` for many files, with one directory fsync per folder; one error (or None) per file.

    A failed directory fsync is the error of every file renamed in that folder.
    """
    errors: list[Exception | None] = []
    renamed: dict[str, list[int]] = {}
    for index, (path, data) in enumerate(files):
        try:
            _write_temporary(path, data, dir_fd)
            os.replace(f"{path}.tmp", path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            renamed.setdefault(os.path.dirname(path) or ".", []).append(index)
            errors.append(None)
        except OSError as e:
            errors.append(e)
    for directory, indexes in renamed.items():
        try:
            fsync_directory(directory, dir_fd)
        except OSError as e:
            for index in indexes:
                errors[index] = e
    return errors


def _write_temporary(path: str, data: bytes, dir_fd: int | None) -> None:
    temporary = f"{path}.tmp"
    try:
        os.unlink(temporary, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str, dir_fd: int | None = None) -> None:
    """fsync `directory`, or, with `dir_fd`, the folder it is open on (names in it are relative)."""
    if dir_fd is not None:
        os.fsync(dir_fd)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
