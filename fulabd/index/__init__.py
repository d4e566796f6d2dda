"""
The search index: full text of every session's lines and PARs, kept beside the store.

This package is the seam.  `SearchIndex` is what the rest of the daemon may
use; `fulabd.index.sqlite` is the embedded implementation (SQLite FTS5 under
`<root>/.index/`), and a server database (PostgreSQL full-text search) can take
its place without anything outside this package changing.  Queries arrive
already parsed (`fulabd.index.query`), never as a database's own syntax.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SessionInfo:
    """What the index records of a session, taken from the listings' view of it."""

    key: str                  # the hub's key: the session file's absolute path
    session_id: str
    listing_id: str           # `id` in the listings: what `/fulab/lab/?session=` takes
    source: str | None = None
    project: str | None = None


@dataclass(frozen=True)
class Progress:
    """How far a session is indexed: lines and their bytes from the file's start, PARs from the sidecar's."""

    lines: int = 0
    bytes: int = 0
    pars: int = 0
    head: str | None = None   # a fingerprint of line 0: a file rewritten in place no longer matches


@dataclass(frozen=True)
class Term:
    """One search term: all its words must occur, adjacent and in order (a one-word term is just a word)."""

    words: tuple[str, ...]
    prefix: bool = False      # the last word may be the start of a longer word


@dataclass(frozen=True)
class Filters:
    source: str | None = None
    project: str | None = None
    session: str | None = None          # a session id or a listing id
    kinds: tuple[str, ...] = ()         # any of these kinds
    tags: tuple[str, ...] = ()          # PARs with any of these tags
    since: float | None = None          # seconds since the epoch, inclusive
    until: float | None = None          # exclusive


@dataclass
class Page:
    """One page of results, best first; `cursor` fetches the next page (None: this was the last)."""

    items: list[dict] = field(default_factory=list)
    cursor: str | None = None


class BadCursor(ValueError):
    """A `cursor` that this index did not hand out, or one for another query."""


class IndexUnusable(Exception):
    """The index's files are damaged: the caller wipes it (`reset`) and indexes again from the session files."""


class SearchIndex(Protocol):
    """Full-text index of sessions.

    Calls block.  One writer calls the writing methods (the index worker, a
    process of its own); any number of threads, in other processes too, may
    search at the same time.  Writes inside `batch()` are one transaction: all
    of them are kept, or none.  Lines are given in order: `add_lines` always
    continues where `progress(key).lines` stands.
    """

    def progress(self, key: str) -> Progress: ...

    def keys(self) -> list[str]: ...

    def batch(self) -> AbstractContextManager: ...

    def add_lines(self, session: SessionInfo, first: int, lines: list[bytes]) -> None: ...

    def add_par(self, session: SessionInfo, index: int, par: dict) -> None: ...

    def forget(self, key: str) -> None: ...

    def reset(self) -> None: ...

    def reopen(self) -> None:
        """In a process that only searches: the writer made the index anew (`reset`)."""

    def search(self, terms: list[Term], filters: Filters, limit: int, cursor: str | None) -> Page:
        """Hits, best match first and newest first among equals: dicts with `session-id`, `id`, `title`,
        `source`, `project`, `line`, `kind`, `timestamp` and `snippet` (a list of `{"text", "match"?}`)."""

    def pars(self, terms: list[Term], filters: Filters, limit: int, cursor: str | None) -> Page:
        """PARs, newest first: dicts with `session-id`, `id` (the session's listing id), `title` (the
        session's), `source`, `project`, `index` and `par` (the PAR as stored)."""

    def close(self) -> None: ...
