"""
What the session listings show, without touching a file per request: the
store's sessions come from its change index (the store never follows a
symlink, so its sessions need no path check), the local folders' sessions
(`--codex-dir`, `--claude-dir`: a few, checked by the catalog) are listed in full.
"""

from __future__ import annotations

import secrets

from fulabd.endpoints import is_decimal

MAX_PAGE = 1000
DEFAULT_PAGE = 100


class BadListingRequest(ValueError):
    """A `limit`, `cursor` or `since` that cannot be used; the message says what to send."""


class Listing:
    """Pages and changes of the listing. Tokens name this process, so a token from before a restart
    gets the whole listing again (`reset`), never a wrong difference."""

    def __init__(self, store, local=lambda: []):
        """`local()` is every served session of the local folders."""
        self.store = store
        self.local = local
        self.epoch = secrets.token_hex(4)

    @property
    def token(self) -> str:
        return f"{self.epoch}-{self.store.index.token}"

    def everything(self) -> list:
        return self.store.sessions() + self.local()

    def page(self, limit: int, cursor: int | None) -> tuple[list, int | None]:
        """A page of up to `limit` store sessions, latest change first (the local ones with the first page)."""
        sessions, after = self.store.index.page(limit, cursor)
        return (self.local() + sessions if cursor is None else sessions), after

    def since(self, token: str) -> list | None:
        """Sessions changed since `token` (and the local ones); None when the token is not this process's."""
        epoch, _, number = token.partition("-")
        if epoch != self.epoch or not is_decimal(number):
            return None
        return self.store.index.since(int(number)) + self.local()


def parse_query(args: dict) -> tuple[int | None, int | None, str | None]:
    """`limit`, `cursor` and `since` of a listing request (bytes query arguments)."""
    def value(name: str) -> str | None:
        raw = args.get(name.encode(), [None])[0]
        return raw.decode("utf-8", "replace") if raw is not None else None

    limit, cursor, since = value("limit"), value("cursor"), value("since")
    if limit is not None and not (is_decimal(limit) and 1 <= int(limit) <= MAX_PAGE):
        raise BadListingRequest(f"limit must be a whole number from 1 to {MAX_PAGE}")
    if cursor is not None and not is_decimal(cursor):
        raise BadListingRequest("cursor must be the \"next\" of the previous page")
    if since is not None and (limit is not None or cursor is not None):
        raise BadListingRequest("since goes alone: it answers every change since the token, not a page")
    page = int(limit) if limit is not None else DEFAULT_PAGE if cursor is not None else None
    return page, int(cursor) if cursor is not None else None, since
