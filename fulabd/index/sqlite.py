"""
The embedded search index: SQLite with FTS5 (the standard library's sqlite3),
in `<root>/.index/search.sqlite3`.

The documents (each a text with its session, line, kind and time) are kept in
parts: FTS5 tables of about PART_TEXT_CHARS of text each, the newest taking what
is indexed now, with rowids that grow across them.  A search reads the newest
part first and an older one only while it has found fewer than MAX_RANKED
matches (`fulabd.index.sqlite_search`), so a common word or a prefix that starts
thousands of words costs about what one part costs, however big the store; and
FTS5's segment merges stay within a part, so a byte indexed into a big store
costs what it costs in a small one.
A plain table holds each session's progress, written in the same transaction
as its rows, so a crash mid-indexing leaves the index at a commit: nothing
half-indexed, nothing twice.  The file is a cache of the session files:
deleted or damaged, it is rebuilt from them.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager

import orjson
from twisted.logger import Logger

from fulabd.index import IndexUnusable, Progress, SessionInfo
from fulabd.index.extract import line_documents, par_document
from fulabd.index.sqlite_search import Searching, part_table

FILE_NAME = "search.sqlite3"
SCHEMA_VERSION = 3  # 2 added prefix indexes (a short prefix* reads one posting list); 3 the parts
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions(
    sid INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, session_id TEXT NOT NULL, listing_id TEXT NOT NULL,
    source TEXT, project TEXT, title TEXT, head TEXT,
    lines INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, pars INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS parts(
    part INTEGER PRIMARY KEY, text_chars INTEGER NOT NULL, next_rowid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pars(
    sid INTEGER NOT NULL, par_index INTEGER NOT NULL, t REAL, tags TEXT NOT NULL, par TEXT NOT NULL,
    PRIMARY KEY (sid, par_index));
CREATE INDEX IF NOT EXISTS pars_by_time ON pars(t DESC);
"""
PART_TABLE = """CREATE VIRTUAL TABLE {table} USING fts5(
    body, sid UNINDEXED, line UNINDEXED, kind UNINDEXED, ts UNINDEXED, t UNINDEXED, par UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3 4')"""
COLUMNS = "body, sid, line, kind, ts, t, par"
# Measured on scenario 8's 1 GB store (one process, no daemon): one table took 57.8 s of CPU to fill and its
# slowest prefixes 94 ms (p99); parts of 64 MB of text, 53.3 s and 22 ms; and merging segments when 8 of a
# level gather (FTS5's default is 4), 44.0 s and 26 ms.
PART_TEXT_CHARS = 64 << 20
AUTOMERGE = 8
TITLE_CHARS = 120


class FTS5Missing(RuntimeError):
    pass


def check_fts5() -> None:
    """Raise `FTS5Missing`, saying what to do, when this Python's SQLite cannot make FTS5 tables."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("CREATE VIRTUAL TABLE probe USING fts5(body)")
    except sqlite3.OperationalError:
        raise FTS5Missing(
            f"this Python's SQLite {sqlite3.sqlite_version} was built without FTS5, so sessions cannot be "
            "searched. Run fulabd on a Python whose sqlite3 has FTS5 (Debian's and Ubuntu's python3, python.org "
            "builds and pyenv builds against libsqlite3-dev all do), or start it with --no-index") from None
    finally:
        connection.close()


def fingerprint(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()[:16]


class SqliteIndex(Searching):
    """`SearchIndex` on SQLite FTS5: one writer, a connection per reading thread.

    The writer and the readers may be in different processes (WAL mode lets readers read while the writer
    writes): the daemon opens it with `writing=False`, to search, and the index worker to write."""

    _log = Logger()

    def __init__(self, folder: str, writing: bool = True):
        """Opens the index to write, made anew if it is damaged or of an older layout; without `writing`, only to
        search, never writing (a search before the writer made the index finds nothing)."""
        check_fts5()
        self.folder = folder
        self.path = os.path.join(folder, FILE_NAME)
        self.made_anew = False              # this writer created the file, or replaced it
        self._generation = 0
        self._readers = threading.local()
        self._cache: dict[str, list] = {}   # key -> [sid, lines, bytes, pars, head, title, info], the writer's
        self._part: list | None = None      # the newest part: [number, text_chars, next_rowid], the writer's
        self._writer = None
        if not writing:
            return
        os.makedirs(folder, exist_ok=True)
        self.made_anew = not os.path.exists(self.path)
        try:
            self._writer = self._open()
        except sqlite3.OperationalError:
            raise  # locked, or out of space: not damage; the file is left as it is
        except sqlite3.DatabaseError as e:
            self._log.error("the search index {path} is damaged ({error}); rebuilding it from the session files",
                            path=self.path, error=e)
            self._remove_files()
            self.made_anew = True
            self._writer = self._open()

    # -- files -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA busy_timeout = 5000")
        return connection

    def _connect_to_read(self) -> sqlite3.Connection:
        """Read-only: a reader never creates the file nor changes it."""
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        connection = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA busy_timeout = 5000")
        return connection

    def _open(self) -> sqlite3.Connection:
        connection = self._connect()
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                connection.close()
                self._log.info("the search index {path} has an older layout; rebuilding it", path=self.path)
                self._remove_files()
                self.made_anew = True
                connection = self._connect()
                version = 0
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")  # a crash may lose the last commits, never mix them
            if version == 0:  # in one transaction: a reader never sees half a schema (an FTS5 table without its own)
                connection.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass

    def reset(self) -> None:
        """Forget everything: an empty index in place of a damaged one."""
        self._writer.close()
        self._remove_files()
        self._cache.clear()
        self._part = None
        self._generation += 1
        self._writer = self._open()

    def reopen(self) -> None:
        """The index's files were made anew by another process: readers open them again."""
        self._generation += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _reader(self) -> sqlite3.Connection:
        readers = self._readers
        if getattr(readers, "generation", None) != self._generation:
            if getattr(readers, "connection", None) is not None:
                readers.connection.close()
            readers.connection = self._connect_to_read()
            readers.generation = self._generation
        return readers.connection

    def _read(self, sql: str, values: list) -> list:
        """Rows of a query; none while the writer has not made the index yet."""
        if not os.path.exists(self.path):
            return []
        with self._damage_is_unusable():
            try:
                return self._reader().execute(sql, values).fetchall()
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    return []
                raise

    @contextmanager
    def _damage_is_unusable(self):
        try:
            yield
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:
            raise IndexUnusable(f"{self.path}: {e}") from e

    # -- writing (the writer) ----------------------------------------------------------

    @contextmanager
    def batch(self):
        with self._damage_is_unusable():
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._writer.execute("ROLLBACK")
                self._cache.clear()
                self._part = None
                raise
            self._writer.execute("COMMIT")

    def _row(self, session: SessionInfo) -> list:
        row = self._cache.get(session.key)
        if row is None:
            found = self._writer.execute(
                "SELECT sid, lines, bytes, pars, head, title, session_id, listing_id, source, project "
                "FROM sessions WHERE key = ?", (session.key,)).fetchone()
            if found is None:
                sid = self._writer.execute(
                    "INSERT INTO sessions(key, session_id, listing_id, source, project) VALUES (?, ?, ?, ?, ?)",
                    (session.key, session.session_id, session.listing_id, session.source, session.project)
                ).lastrowid
                row = [sid, 0, 0, 0, None, None, session]
            else:
                row = [*found[:6], SessionInfo(session.key, *found[6:])]
            self._cache[session.key] = row
        if row[6] != session:
            self._writer.execute("UPDATE sessions SET session_id = ?, listing_id = ?, source = ?, project = ? "
                                 "WHERE sid = ?", (session.session_id, session.listing_id, session.source,
                                                   session.project, row[0]))
            row[6] = session
        return row

    def progress(self, key: str) -> Progress:
        row = self._cache.get(key)
        if row is None:
            with self._damage_is_unusable():
                found = self._writer.execute("SELECT lines, bytes, pars, head FROM sessions WHERE key = ?",
                                             (key,)).fetchone()
            return Progress(*found) if found else Progress()
        return Progress(row[1], row[2], row[3], row[4])

    def keys(self) -> list[str]:
        with self._damage_is_unusable():
            return [key for (key,) in self._writer.execute("SELECT key FROM sessions")]

    def add_lines(self, session: SessionInfo, first: int, lines: list[bytes]) -> None:
        row = self._row(session)
        sid = row[0]
        if first != row[1]:
            raise ValueError(f"{session.key}: lines from {first} given, but {row[1]} are indexed")
        rows, title = [], row[5]
        for offset, raw in enumerate(lines):
            for document in line_documents(raw, first + offset):
                rows.append((document.text, sid, document.line, document.kind, document.timestamp,
                             document.seconds, None))
                if title is None and document.opening:
                    title = document.text.strip().split("\n", 1)[0][:TITLE_CHARS]
        self._insert(rows)
        if first == 0 and lines:
            row[4] = fingerprint(lines[0])
        row[1] += len(lines)
        row[2] += sum(len(raw) + 1 for raw in lines)
        row[5] = title
        self._writer.execute("UPDATE sessions SET lines = ?, bytes = ?, head = ?, title = ? WHERE sid = ?",
                             (row[1], row[2], row[4], title, sid))

    def add_par(self, session: SessionInfo, index: int, par: dict) -> None:
        row = self._row(session)
        sid = row[0]
        document = par_document(par)
        tags = [str(tag) for tag in par.get("tags") or [] if tag is not None]
        self._writer.execute("INSERT OR REPLACE INTO pars(sid, par_index, t, tags, par) VALUES (?, ?, ?, ?, ?)",
                             (sid, index, document.seconds, orjson.dumps(tags).decode(),
                              orjson.dumps(par, default=str).decode()))
        self._insert([(document.text, sid, document.line, "par", document.timestamp, document.seconds, index)])
        row[3] = max(row[3], index + 1)
        self._writer.execute("UPDATE sessions SET pars = ? WHERE sid = ?", (row[3], sid))

    def forget(self, key: str) -> None:
        found = self._writer.execute("SELECT sid FROM sessions WHERE key = ?", (key,)).fetchone()
        self._cache.pop(key, None)
        if found is None:
            return
        parts = [part_table(number) for (number,) in self._writer.execute("SELECT part FROM parts")]
        for table in (*parts, "pars", "sessions"):
            self._writer.execute(f"DELETE FROM {table} WHERE sid = ?", found)

    def _insert(self, rows: list[tuple]) -> None:
        """Documents (in COLUMNS' order) into the newest part, begun anew once it holds PART_TEXT_CHARS."""
        if not rows:
            return
        part = self._part
        if part is None:
            found = self._writer.execute("SELECT part, text_chars, next_rowid FROM parts ORDER BY part DESC "
                                         "LIMIT 1").fetchone()
            part = self._part = list(found) if found else None
        if part is None or part[1] >= PART_TEXT_CHARS:
            number, next_rowid = (0, 1) if part is None else (part[0] + 1, part[2])
            table = part_table(number)
            self._writer.execute(PART_TABLE.format(table=table))
            self._writer.execute(f"INSERT INTO {table}({table}, rank) VALUES ('automerge', {AUTOMERGE})")
            self._writer.execute("INSERT INTO parts(part, text_chars, next_rowid) VALUES (?, 0, ?)",
                                 (number, next_rowid))
            part = self._part = [number, 0, next_rowid]
        number, first = part[0], part[2]
        self._writer.executemany(f"INSERT INTO {part_table(number)}(rowid, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(first + offset, *row) for offset, row in enumerate(rows)])
        part[1] += sum(len(row[0]) for row in rows)
        part[2] += len(rows)
        self._writer.execute("UPDATE parts SET text_chars = ?, next_rowid = ? WHERE part = ?",
                             (part[1], part[2], number))
