"""
Searching the SQLite index (`fulabd.index.sqlite`), from any thread: matches
and PARs, as pages.  The parts are read newest first, and only while fewer than
MAX_RANKED matches are found, so a search costs about what the newest parts
cost, however big the store.
"""

from __future__ import annotations

import orjson

from fulabd.index import Filters, Page, Term
from fulabd.index.cursors import cursor_at, offset_of, query_token
from fulabd.index.snippet import snippet

MAX_RANKED = 2_000    # matches ranked per search: the most recently indexed ones


def part_table(number: int) -> str:
    """The FTS5 table of part `number`."""
    return f"docs_{number}"


def term_expression(term: Term) -> str:
    """One term as an FTS5 phrase: a quoted string, so nothing in it is FTS5 syntax."""
    phrase = '"' + " ".join(term.words).replace('"', '""') + '"'
    return phrase + "*" if term.prefix else phrase


class Searching:
    """The `SearchIndex` reading methods, over the `_read(sql, values) -> rows` of the class they are part of."""

    def search(self, terms: list[Term], filters: Filters, limit: int, cursor: str | None) -> Page:
        where, values = self._session_filters(filters)
        if filters.kinds:
            where.append(f"d.kind IN ({', '.join('?' * len(filters.kinds))})")
            values += filters.kinds
        where, values = self._time_filters(filters, "d.t", where, values)
        expression = " ".join(term_expression(term) for term in terms)
        token = query_token("search", terms, filters)
        offset = offset_of(cursor, token)
        limit = min(limit, MAX_RANKED - offset)
        if limit <= 0:
            return Page()
        # Ranking scores every candidate: only the MAX_RANKED most recently indexed ones are candidates, found
        # in the newest parts (bm25 weighs a word by how rare it is in its part).  The query is evaluated once in
        # each part read, for rowids and scores; the page's text is then read by rowid, and the snippets made from
        # it (`fulabd.index.snippet`).  A session forgotten between the two reads leaves the page shorter.
        candidates = []
        for table in self._parts():
            candidates += [(table, *row) for row in self._read(
                f"SELECT d.rowid, bm25({table}), d.t FROM {table} d JOIN sessions s ON s.sid = d.sid "
                f"WHERE {' AND '.join([f'{table} MATCH ?', *where])} ORDER BY d.rowid DESC LIMIT ?",
                [expression, *values, MAX_RANKED - len(candidates)])]
            if len(candidates) >= MAX_RANKED:
                break
        candidates.sort(key=lambda c: (c[2], c[3] is None, -(c[3] or 0), -c[1]))  # score, newest, last indexed
        page = candidates[offset:offset + limit + 1]
        shown = page[:limit]
        rows = {}
        for table in {c[0] for c in shown}:
            rowids = [c[1] for c in shown if c[0] == table]
            rows.update((row[0], row[1:]) for row in self._read(
                "SELECT d.rowid, s.session_id, s.listing_id, s.title, s.source, s.project, d.line, d.kind, d.ts, "
                f"d.par, d.body FROM {table} d JOIN sessions s ON s.sid = d.sid "
                f"WHERE d.rowid IN ({', '.join('?' * len(rowids))})", rowids))
        items = [{"session-id": row[0], "id": row[1], "title": row[2], "source": row[3], "project": row[4],
                  "line": row[5], "kind": row[6], "timestamp": row[7],
                  **({"par-index": row[8]} if row[8] is not None else {}), "snippet": snippet(row[9], terms)}
                 for row in (rows[c[1]] for c in shown if c[1] in rows)]
        return Page(items, cursor_at(offset + limit, token) if len(page) > limit else None)

    def _parts(self) -> list[str]:
        """The part tables, newest first."""
        return [part_table(number) for (number,) in self._read("SELECT part FROM parts ORDER BY part DESC", [])]

    def pars(self, terms: list[Term], filters: Filters, limit: int, cursor: str | None) -> Page:
        where, values = self._session_filters(filters)
        if filters.tags:
            where.append(f"EXISTS (SELECT 1 FROM json_each(p.tags) WHERE value IN "
                         f"({', '.join('?' * len(filters.tags))}))")
            values += filters.tags
        if terms:
            parts = self._parts()
            where.append("(p.sid, p.par_index) IN (" + " UNION ALL ".join(
                f"SELECT sid, par FROM {table} WHERE {table} MATCH ? AND par IS NOT NULL" for table in parts) + ")"
                         if parts else "0")
            values += [" ".join(term_expression(term) for term in terms)] * len(parts)
        where, values = self._time_filters(filters, "p.t", where, values)
        token = query_token("pars", terms, filters)
        offset = offset_of(cursor, token)
        sql = ("SELECT s.session_id, s.listing_id, s.title, s.source, s.project, p.par_index, p.par "
               f"FROM pars p JOIN sessions s ON s.sid = p.sid {'WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY p.t DESC NULLS LAST, p.rowid DESC LIMIT ? OFFSET ?")
        rows = self._read(sql, [*values, limit + 1, offset])
        items = [{"session-id": row[0], "id": row[1], "title": row[2], "source": row[3], "project": row[4],
                  "index": row[5], "par": orjson.loads(row[6])} for row in rows[:limit]]
        return Page(items, cursor_at(offset + limit, token) if len(rows) > limit else None)

    @staticmethod
    def _session_filters(filters: Filters) -> tuple[list[str], list]:
        where, values = [], []
        for column, value in (("s.source", filters.source), ("s.project", filters.project)):
            if value is not None:
                where.append(f"{column} = ?")
                values.append(value)
        if filters.session is not None:
            where.append("(s.session_id = ? OR s.listing_id = ?)")
            values += [filters.session, filters.session]
        return where, values

    @staticmethod
    def _time_filters(filters: Filters, column: str, where: list, values: list) -> tuple[list[str], list]:
        if filters.since is not None:
            where.append(f"{column} >= ?")
            values.append(filters.since)
        if filters.until is not None:
            where.append(f"{column} < ?")
            values.append(filters.until)
        return where, values
