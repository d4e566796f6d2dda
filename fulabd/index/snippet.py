"""
A hit's snippet: a few words of its text around the query's, those marked.

Made here from the text and the parsed query, not by the database: SQLite's
`snippet()` has to evaluate the query's MATCH again, and for a prefix that
starts thousands of distinct words one evaluation is most of a search's time.
Words are found as the index finds them (`query.words_of`: runs of letters
and digits) and compared as it compares them, without case or accents.
"""

from __future__ import annotations

import re
import unicodedata

from fulabd.index import Term
from fulabd.index.query import WORD

WORDS = 12          # words a snippet shows
ELLIPSIS = "…"      # where the text goes on beyond them
_SPACES = re.compile(r"\s+")


def fold(word: str) -> str:
    """A word as the index compares it: lower case, accents taken off."""
    return "".join(char for char in unicodedata.normalize("NFD", word) if not unicodedata.combining(char)).lower()


def snippet(text: str, terms: list[Term], words: int = WORDS) -> list[dict]:
    """`words` words of `text` around the most terms found together, as parts `{"text": …}` and
    `{"text": …, "match": true}` (whitespace runs shown as one space)."""
    tokens = [(found.start(), found.end(), fold(found.group())) for found in WORD.finditer(text)]
    if not tokens:
        return [{"text": _SPACES.sub(" ", text)}] if text.strip() else []
    found = occurrences(tokens, terms)
    first = best_window(found, len(tokens), words)
    last = min(len(tokens), first + words)
    spans = merged([(tokens[start][0], tokens[end - 1][1]) for start, end, _ in found
                    if start >= first and end <= last])
    parts, at = [], tokens[first][0] if first > 0 else 0  # the text's own start and end are shown whole
    stop = tokens[last - 1][1] if last < len(tokens) else len(text)
    for start, end in spans:
        if start > at:
            parts.append({"text": _SPACES.sub(" ", text[at:start])})
        parts.append({"text": text[start:end], "match": True})
        at = end
    if stop > at:
        parts.append({"text": _SPACES.sub(" ", text[at:stop])})
    if first > 0:
        parts.insert(0, {"text": ELLIPSIS})
    if last < len(tokens):
        parts.append({"text": ELLIPSIS})
    return parts


def occurrences(tokens: list[tuple[int, int, str]], terms: list[Term]) -> list[tuple[int, int, int]]:
    """(first token, past the last, term) of every place a term's words are, adjacent and in order."""
    found = []
    for number, term in enumerate(terms):
        wanted = [fold(word) for word in term.words]
        for start in range(len(tokens) - len(wanted) + 1):
            *whole, tail = (tokens[start + offset][2] for offset in range(len(wanted)))
            if whole == wanted[:-1] and (tail.startswith(wanted[-1]) if term.prefix else tail == wanted[-1]):
                found.append((start, start + len(wanted), number))
    return found


def best_window(found: list[tuple[int, int, int]], count: int, words: int) -> int:
    """The first token of the window with the most distinct terms (then the most places), a found place a
    quarter of the way in rather than at its edge; the earliest of equals."""
    best, first = (0, 0), 0
    for start, _, _ in sorted(found):
        window = max(0, min(start - words // 4, count - words))
        inside = [number for begin, end, number in found if begin >= window and end <= window + words]
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
