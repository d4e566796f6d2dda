"""
The search box's language, parsed here and nowhere else: words, "phrases" and
prefix*, all of which must match.  Whatever a user types becomes `Term`s or a
`BadQuery` that says what to change; no database ever sees the user's syntax.

Also the filters shared by the search and PAR endpoints (`source=`, `since=`, …).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from fulabd.endpoints import is_decimal
from fulabd.index import Filters, Term
from fulabd.index.extract import KINDS

MAX_QUERY = 500        # characters of `q`
MAX_TERMS = 16
MIN_PREFIX = 2         # characters before a `*`
MAX_FILTER = 1000      # characters of a filter's value
OPERATORS = frozenset({"AND", "OR", "NOT", "NEAR"})
WORD = re.compile(r"[^\W_]+")  # a word, as the index splits text into them
_COLUMN_FILTER = re.compile(r"^\w+:[^\W\d]")  # `name:word`, a column filter in most search engines


class BadQuery(ValueError):
    """`q` cannot be searched; the message says how to write it."""


class BadFilter(ValueError):
    """A filter's value is malformed; the message names the parameter and its form."""


def words_of(text: str) -> tuple[str, ...]:
    """The words of `text` as the index splits it: runs of letters and digits."""
    return tuple(WORD.findall(text))


def parse_query(q: str) -> list[Term]:
    """The terms of a search, or `BadQuery`."""
    if len(q) > MAX_QUERY:
        raise BadQuery(f"the query is {len(q)} characters long; at most {MAX_QUERY} are searched")
    terms = []
    for text, quoted, prefix in _split(q):
        if not quoted:
            _check_bare(text)
        words = words_of(text)
        if not words:
            continue
        if prefix and len(words[-1]) < MIN_PREFIX:
            raise BadQuery(f"{words[-1]}* is too short a prefix: give at least {MIN_PREFIX} characters before *")
        terms.append(Term(words, prefix))
    if not terms:
        raise BadQuery("the query has no words to search for (letters or digits)")
    if len(terms) > MAX_TERMS:
        raise BadQuery(f"the query has {len(terms)} terms; at most {MAX_TERMS} are searched")
    return terms


def _split(q: str):
    """(text, quoted, prefix) for each term: whitespace separates, double quotes group."""
    position = 0
    while position < len(q):
        if q[position].isspace():
            position += 1
        elif q[position] == '"':
            end = q.find('"', position + 1)
            if end < 0:
                raise BadQuery('a " has no closing "; close the phrase or remove the quote')
            prefix = q.startswith("*", end + 1)
            yield q[position + 1:end], True, prefix
            position = end + 1 + prefix
        else:
            end = position
            while end < len(q) and not q[end].isspace() and q[end] != '"':
                end += 1
            text = q[position:end]
            prefix = text.endswith("*")
            yield (text[:-1] if prefix else text), False, prefix
            position = end


def _check_bare(text: str) -> None:
    if text in OPERATORS or text.startswith("NEAR("):
        raise BadQuery(f"{text} is not an operator here: every term must match. To find the word itself, "
                       f'quote it ("{text.lower()}")')
    if "*" in text:
        raise BadQuery(f"{text}: * is only allowed at the end of a word (prefix*)")
    if text.startswith(("{", "^")) or _COLUMN_FILTER.match(text):
        raise BadQuery(f"{text}: column filters are not supported; use the filter parameters (source=, kind=, …) "
                       f'or quote the text to find it ("{text}")')


def parse_time(name: str, value: str) -> float:
    """An ISO 8601 date or date-time (UTC when it has no offset), as seconds since the epoch."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise BadFilter(f"{name}={value!r} is not a date or time; give ISO 8601, e.g. 2026-01-31 or "
                        "2026-01-31T20:15:41Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_list(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip().lstrip(":") for part in value.split(",") if part.strip()))


def parse_limit(value: str | None, default: int, most: int) -> int:
    if value is None:
        return default
    if not is_decimal(value) or not 1 <= int(value) <= most:
        raise BadFilter(f"limit={value!r}: give a whole number from 1 to {most}")
    return int(value)


def parse_filters(args: dict[str, str]) -> Filters:
    """The filters among a request's parameters (already decoded to text)."""
    for name, value in args.items():
        if len(value) > MAX_FILTER:
            raise BadFilter(f"{name}= is {len(value)} characters long; at most {MAX_FILTER} are accepted")
    kinds = parse_list(args.get("kind", ""))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise BadFilter(f"kind={','.join(unknown)} is not a kind; the kinds are {', '.join(KINDS)}")
    return Filters(source=args.get("source") or None, project=args.get("project") or None,
                   session=args.get("session") or None, kinds=kinds, tags=parse_list(args.get("tags", "")),
                   since=parse_time("since", args["since"]) if args.get("since") else None,
                   until=parse_time("until", args["until"]) if args.get("until") else None)
