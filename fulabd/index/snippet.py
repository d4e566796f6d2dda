"""
A hit's snippet: a few words of its text around the query's, those marked.

Made here from the text and the parsed query, not by the database: SQLite's
`snippet()` has to evaluate the query's MATCH again, and for a prefix that
starts thousands of distinct words one evaluation is most of a search's time.
Words are found as the index finds them (`query.WORD`: runs of letters and
digits) and compared as it compares them, without case or accents.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from itertools import islice

from fulabd.index import Term
from fulabd.index.query import WORD

WORDS = 12          # words a snippet shows
ELLIPSIS = "…"      # where the text goes on beyond them
CANDIDATES = 64     # places a window may be centred on: the first ones (a text can hold thousands)
_SPACES = re.compile(r"\s+")


def fold(word: str) -> str:
    """A word as the index compares it: lower case, accents taken off."""
    if word.isascii():
        return word.lower()
    return "".join(char for char in unicodedata.normalize("NFD", word) if not unicodedata.combining(char)).lower()


def snippet(text: str, terms: list[Term], words: int = WORDS) -> list[dict]:
    """`words` words of `text` around the most terms found together, as parts `{"text": …}` and
    `{"text": …, "match": true}` (whitespace runs shown as one space)."""
    folded = WORD.findall(text.lower()) if text.isascii() else [fold(word) for word in WORD.findall(text)]
    if not folded:
        return [{"text": _SPACES.sub(" ", text)}] if text.strip() else []
    found = occurrences(folded, terms)
    first = best_window(found, len(folded), words)
    last = min(len(folded), first + words)
    tokens = [(word.start(), word.end()) for word in islice(WORD.finditer(text), first, last)]
    spans = merged([(tokens[start - first][0], tokens[end - 1 - first][1]) for start, end, _ in found
                    if start >= first and end <= last])
    at = tokens[0][0] if first > 0 else 0  # the text's own start and end are shown whole
    stop = tokens[-1][1] if last < len(folded) else len(text)
    parts = [{"text": ELLIPSIS}] if first > 0 else []
    for start, end in spans:
        if start > at:
            parts.append({"text": _SPACES.sub(" ", text[at:start])})
        parts.append({"text": text[start:end], "match": True})
        at = end
    if stop > at:
        parts.append({"text": _SPACES.sub(" ", text[at:stop])})
    if last < len(folded):
        parts.append({"text": ELLIPSIS})
    return parts


def occurrences(words: list[str], terms: list[Term]) -> list[tuple[int, int, int]]:
    """(first word, past the last, term) of every place a term's words are, adjacent and in order, by place."""
    found = []
    for number, term in enumerate(terms):
        *leading, last = (fold(word) for word in term.words)
        size = len(leading) + 1
        ends = [index + 1 for index, word in enumerate(words)
                if (word.startswith(last) if term.prefix else word == last)]
        found += [(end - size, end, number) for end in ends
                  if end >= size and words[end - size:end - 1] == leading]
    return sorted(found)


def best_window(found: list[tuple[int, int, int]], count: int, words: int) -> int:
    """The first word of the window with the most distinct terms (then the most places), a place a quarter of
    the way in rather than at its edge; the earliest of equals."""
    begins = [begin for begin, _, _ in found]
    best, first = (0, 0), 0
    for begin, _, _ in found[:CANDIDATES]:
        window = max(0, min(begin - words // 4, count - words))
        inside = [number for _, end, number in found[bisect_left(begins, window):bisect_left(begins, window + words)]
                  if end <= window + words]
        score = (len(set(inside)), len(inside))
        if score > best:
            best, first = score, window
    return first


def merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping character spans as one, in order."""
    result: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if result and start <= result[-1][1]:
            result[-1] = (result[-1][0], max(result[-1][1], end))
        else:
            result.append((start, end))
    return result
