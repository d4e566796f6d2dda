"""
Pages of a search: a cursor is an offset into the ranked matches, bound to the
query it pages through, so that a cursor of one query given with another is
refused rather than read as a position in it.
"""

from __future__ import annotations

import base64
import hashlib

import orjson

from fulabd.index import BadCursor, Filters, Term


def query_token(what: str, terms: list[Term], filters: Filters) -> str:
    return hashlib.sha256(repr((what, terms, filters)).encode()).hexdigest()[:12]


def cursor_at(offset: int, token: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset, "q": token})).decode().rstrip("=")


def offset_of(cursor: str | None, token: str) -> int:
    if cursor is None:
        return 0
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = value["o"]
        ok = value["q"] == token and isinstance(offset, int) and offset >= 0
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        ok = False
    if not ok:
        raise BadCursor("this cursor does not belong to this query: pass back the `cursor` of the previous "
                        "page, with the same q and filters")
    return offset
