"""
The search index in memory and on a real SQLite file, without a daemon: the
query language, what a line gives to the index, snippets, ranking and the
refusal of an SQLite without FTS5.  The index worker and its feeder are in
`test_index_worker.py`.
"""

import orjson
import pytest

from fulabd.index import Filters, Term
from fulabd.index.extract import TOOL_RESULT_CHARS, line_documents
from fulabd.index.http import prior_learning
from fulabd.index.query import WORD, BadQuery, parse_query
from fulabd.index.snippet import snippet
from fulabd.index.sqlite import SqliteIndex
from fulabd.local import index_file


def line(kind: str, content) -> bytes:
    return orjson.dumps({"type": kind, "timestamp": "2026-01-02T03:04:05Z",
                         "message": {"role": kind, "content": content}})


def test_the_query_language():
    assert parse_query('store.py "rm -rf" flak* "new sess"*') == [
        Term(("store", "py")), Term(("rm", "rf")), Term(("flak",), prefix=True), Term(("new", "sess"), prefix=True)]
    assert parse_query('"NEAR(a b)" "a OR b"') == [Term(("NEAR", "a", "b")), Term(("a", "OR", "b"))]
    for hostile in ['"open', "x AND y", "NEAR(x y)", "title:x", "*", "a*", "ab*cd", "", "x" * 501]:
        with pytest.raises(BadQuery):
            parse_query(hostile)


def test_what_a_line_gives_the_index():
    codex_call = orjson.dumps({"type": "response_item", "timestamp": "2026-01-02T03:04:05Z", "payload": {
        "type": "function_call", "name": "shell", "arguments": '{"command": ["bash", "-lc", "rm -rf build"]}'}})
    [call] = line_documents(codex_call, 7)
    assert (call.line, call.kind, call.text) == (7, "tool", "shell\nbash\n-lc\nrm -rf build")
    result = line("user", [{"type": "tool_result", "tool_use_id": "t", "content": "y" * 10_000}])
    assert [(doc.kind, len(doc.text)) for doc in line_documents(result, 0)] == [("tool-result", TOOL_RESULT_CHARS)]
    [prompt] = line_documents(line("user", "Fix the flaky test"), 1)
    assert (prompt.kind, prompt.opening, prompt.seconds) == ("user", True, 1767323045.0)
    assert not line_documents(line("user", "<command-name>/clear</command-name>"), 2)[0].opening
    assert line_documents(b'{"type":"event_msg","payload":{"type":"token_count"}}', 3) == []
    assert line_documents(b"not json", 4) == []


def test_snippets_are_parts_never_markup():
    assert snippet("the <b>needle</b> in  a\nhay", parse_query("needle")) == [
        {"text": "the <b>"}, {"text": "needle", "match": True}, {"text": "</b> in a hay"}]


def test_a_snippet_marks_words_as_the_index_matches_them():
    """Without case or accents; a phrase as one mark; a prefix; the window around the most terms, cut with …"""
    text = " ".join(f"w{n}" for n in range(40)) + " Café RM -rf / tokenizer " + " ".join(f"v{n}" for n in range(40))
    parts = snippet(text, parse_query('cafe "rm rf" tok*'))
    assert [part["text"] for part in parts if part.get("match")] == ["Café", "RM -rf", "tokenizer"]
    assert parts[0] == {"text": "…"} and parts[-1] == {"text": "…"}
    assert sum(len(WORD.findall(part["text"])) for part in parts) == 12
    assert snippet("nothing here", parse_query("absent")) == [{"text": "nothing here"}]
    assert snippet("<img src=x> needle!", parse_query("needle")) == [
        {"text": "<img src=x> "}, {"text": "needle", "match": True}, {"text": "!"}]
    assert snippet("", parse_query("absent")) == []


def test_the_prior_learning_block_is_the_old_one():
    block = prior_learning([("s1", {"title": "T", "timestamp": "2026-01-31T20:15:41Z", "tags": ["a", "b"],
                                    "questions": {"learned": "L"}}), ("s2", {})])
    assert block == ("# Prior Learning (from 2 PARs)\n\n## T\n*Session: s1 | 2026-01-31T20:15:41Z*\n*Tags: a, b*\n\n"
                     "**Intention:** \n\n**What happened:** \n\n**Perspectives:** \n\n**Learned:** L\n\n"
                     "**Forward:** \n\n---\n\n## Session Review\n*Session: s2 | *\n\n**Intention:** \n\n"
                     "**What happened:** \n\n**Perspectives:** \n\n**Learned:** \n\n**Forward:** \n")


@pytest.fixture
def index(tmp_path):
    opened = SqliteIndex(str(tmp_path / ".index"))
    yield opened
    opened.close()


def local_session(tmp_path, lines: list[bytes]):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(raw + b"\n" for raw in lines))
    return index_file(str(path), "claude")


def search(index, word: str) -> list[int]:
    return [hit["line"] for hit in index.search(parse_query(word), Filters(), 100, None).items]


def feeder_info(session):
    from fulabd.index.feeder import session_news
    from fulabd.index.worker import Target

    return Target(session_news(session)).info


def test_only_the_most_recently_indexed_matches_are_ranked(tmp_path, index, monkeypatch):
    from fulabd.index import sqlite_search

    monkeypatch.setattr(sqlite_search, "MAX_RANKED", 30)
    session = local_session(tmp_path, [line("user", f"common word{i}") for i in range(40)])
    with index.batch():
        index.add_lines(feeder_info(session), 0, [line("user", f"common word{i}") for i in range(40)])
    lines, cursor = [], None
    while True:
        page = index.search(parse_query("common"), Filters(), 7, cursor)
        lines += [hit["line"] for hit in page.items]
        if (cursor := page.cursor) is None:
            break
    assert sorted(lines) == list(range(10, 40))


def test_documents_fill_parts_and_a_search_reads_the_newest_first(tmp_path, index, monkeypatch):
    """Parts of about 60 characters: every match is found across them, the most recent MAX_RANKED only, paged
    in one order; a PAR's words are found in any part; a forgotten session leaves none of its documents in any."""
    from fulabd.index import sqlite, sqlite_search

    monkeypatch.setattr(sqlite, "PART_TEXT_CHARS", 60)
    lines = [line("user", f"common word{i} " + "filler " * (i % 3)) for i in range(40)]
    session = local_session(tmp_path, lines)
    with index.batch():
        for first in range(0, 40, 4):
            index.add_lines(feeder_info(session), first, lines[first:first + 4])
        index.add_par(feeder_info(session), 0, {"title": "a review", "questions": {"learned": "parsnip"}})
    assert len(index._parts()) > 5
    assert sorted(search(index, "common")) == list(range(40))
    assert search(index, "word17") == [17]
    assert [hit["par-index"] for hit in index.search(parse_query("parsnip"), Filters(), 10, None).items] == [0]
    assert [hit["index"] for hit in index.pars(parse_query("parsnip"), Filters(), 10, None).items] == [0]
    whole, paged, cursor = index.search(parse_query("common"), Filters(), 100, None).items, [], None
    while True:
        page = index.search(parse_query("common"), Filters(), 7, cursor)
        paged += page.items
        if (cursor := page.cursor) is None:
            break
    assert paged == whole

    monkeypatch.setattr(sqlite_search, "MAX_RANKED", 10)
    assert sorted(search(index, "common")) == list(range(30, 40))
    with index.batch():
        index.forget(session.path)
    assert search(index, "common") == [] and index.pars(parse_query("parsnip"), Filters(), 10, None).items == []


def test_a_python_without_fts5_is_refused_with_what_to_do(monkeypatch):
    """An SQLite built without FTS5 cannot be made here: its refusal to create the table is simulated."""
    import sqlite3

    from twisted.python import usage

    from fulabd import tap
    from fulabd.index import sqlite

    real_connect = sqlite3.connect

    class NoFts5:
        def __init__(self, *args, **kwargs):
            self.connection = real_connect(*args, **kwargs)

        def execute(self, sql, *args):
            if "fts5" in sql:
                raise sqlite3.OperationalError("no such module: fts5")
            return self.connection.execute(sql, *args)

        def close(self):
            self.connection.close()

    monkeypatch.setattr(sqlite.sqlite3, "connect", NoFts5)
    with pytest.raises(sqlite.FTS5Missing, match="--no-index"):
        sqlite.check_fts5()
    with pytest.raises(usage.UsageError, match="without FTS5"):
        tap.Options().parseOptions([])
    options = tap.Options()
    options.parseOptions(["--no-index"])
    assert options["no-index"]


def test_an_index_of_an_older_layout_is_made_anew_with_prefix_indexes(tmp_path):
    import sqlite3

    from fulabd.index import sqlite

    folder = tmp_path / ".index"
    folder.mkdir()
    old = sqlite3.connect(folder / sqlite.FILE_NAME)
    old.executescript("CREATE VIRTUAL TABLE docs USING fts5(body); PRAGMA user_version = 1;")
    old.close()
    opened = SqliteIndex(str(folder))
    try:
        assert opened.made_anew
        session = local_session(tmp_path, [line("user", "tokenizer"), line("user", "other")])
        with opened.batch():
            opened.add_lines(feeder_info(session), 0, [line("user", "tokenizer"), line("user", "other")])
        assert search(opened, "to*") == [0]
    finally:
        opened.close()
    schema = sqlite3.connect(folder / sqlite.FILE_NAME).execute("SELECT sql FROM sqlite_master WHERE name = 'docs_0'")
    assert "prefix = '2 3 4'" in schema.fetchone()[0]
