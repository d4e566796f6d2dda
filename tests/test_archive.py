"""
Archived sessions (`--archive-dir`) in memory: futon3 archives built from the
real samples read into messages in order, hostile archives listed with an
error, rescans finding new, changed and removed files.
"""

import orjson
import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from fulabd import archive, events
from fulabd.archive import ArchiveSource, archived_entry
from fulabd.catalog import Catalog
from fulabd.web import describe
from tests.archives import conversation, futon3_archive, write_archives

PAR = {"timestamp": "2025-09-03T01:00:00Z", "text": "## PAR: Wrap-up\n\n**Intention:** ship", "par-id": "par-1",
       "tags": ["stack-hud", 7]}


def in_thread_now(function, *args):
    return defer.maybeDeferred(function, *args)


@pytest.fixture
def logged():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def started(folder, clock=None) -> ArchiveSource:
    source = ArchiveSource([str(folder)], clock or task.Clock(), run_in_thread=in_thread_now)
    source.startService()
    return source


def viewer_events(source, session) -> list[dict]:
    lines = source.read_lines(session, 0)
    return [events.normalize(line, index) for index, line in enumerate(lines)]


def test_archives_of_the_samples_give_their_messages_in_order_with_timestamps(tmp_path):
    samples = write_archives(tmp_path)
    source = started(tmp_path)
    assert {session.session_id for session in source.sessions()} == set(samples)
    for ident, sample in samples.items():
        session = source.lookup(ident)
        expected = [(event["type"], event["text"], event["timestamp"]) for event in conversation(sample)]
        assert [(event["type"], event["text"], event["timestamp"]) for event in viewer_events(source, session)] \
            == expected
        assert session.count == len(expected) and session.error is None
        assert session.meta["source"] == ("codex" if "rollout-" in sample.name else "claude")


def test_messages_merge_by_time_and_keep_their_list_order_without_one(tmp_path):
    (tmp_path / "s.json").write_bytes(orjson.dumps({
        "lab/session-id": "s",
        "lab/user-messages": [{"timestamp": "2026-01-01T10:00:00Z", "text": "u1"},
                              {"text": "u2 (no time: after u1)"},
                              {"timestamp": "2026-01-01T10:05:00+00:00", "text": "u3"}],
        "lab/assistant-messages": [{"timestamp": "2026-01-01T10:00:00Z", "text": "a1 (tie: after u1)"},
                                   {"timestamp": "2026-01-01T10:02:00.500Z", "text": "a2"},
                                   {"timestamp": "yesterday", "text": "a3 (bad time: after a2)"}]}))
    source = started(tmp_path)
    texts = [event["text"].split(" ")[0] for event in viewer_events(source, source.lookup("s"))]
    assert texts == ["u1", "u2", "a1", "a2", "a3", "u3"]


def test_text_of_any_type_is_kept_and_pars_keep_their_text(tmp_path):
    (tmp_path / "t.json").write_bytes(orjson.dumps({
        "lab/session-id": "t", "lab/par-events": [PAR, "bare text"],
        "lab/user-messages": [{"text": 42}, {"text": None}, {"text": {"k": [1, 2]}}, "just a string", 3.5]}))
    source = started(tmp_path)
    session = source.lookup("t")
    assert [event["text"] for event in viewer_events(source, session)] == [
        "42", "", '{"k":[1,2]}', "just a string", "3.5"]
    first, second = (events.par_event(par, index) for index, par in enumerate(source.pars(session)))
    assert (first["text"], first["title"], first["par-id"], first["tags"], first["timestamp"]) == (
        PAR["text"], "Wrap-up", "par-1", ["stack-hud", "7"], PAR["timestamp"])
    assert (second["text"], second["title"]) == ("bare text", None)
    assert session.par_count == 2


@pytest.mark.parametrize("content, error", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"lab/user-messages": [{"text": "hi"}]}', "no lab/session-id"),
    (b'{"lab/session-id": "x", "lab/user-messages": "hi", "lab/par-events": {}}', "lab/user-messages is not a list"),
    (b'{"lab/session-id": "' + b"x" * 2000 + b'"}', "no lab/session-id"),
    (b"\xff\xfe garbage", "not valid JSON"),
])
def test_a_malformed_archive_is_listed_with_its_error_and_logged(tmp_path, logged, content, error):
    write_archives(tmp_path)
    (tmp_path / "broken.json").write_bytes(content)
    source = started(tmp_path)
    broken = next(session for session in source.sessions() if session.path.endswith("broken.json"))
    assert error in broken.error
    assert len(source.sessions()) == 5  # the good ones are all still there
    listed = describe(broken, 0, 3600)
    assert (listed["archived"], listed["active"], error in listed["error"]) == (True, False, True)
    assert error in archived_entry(broken)["error"]
    assert any("broken.json is malformed" in str(event.get("log_format", "")).format(**event)
               for event in logged if "path" in event)


def test_an_archive_over_the_size_limit_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 1024)
    (tmp_path / "big.json").write_bytes(orjson.dumps({"lab/session-id": "big",
                                                      "lab/user-messages": [{"text": "x" * 2000}]}))
    session = started(tmp_path).sessions()[0]
    assert (session.count, "over the read limit of 1024 bytes" in session.error) == (0, True)


def test_messages_and_pars_over_the_limit_are_left_out_and_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MESSAGES", 3)
    (tmp_path / "many.json").write_bytes(orjson.dumps({
        "lab/session-id": "many", "lab/user-messages": [{"text": f"u{i}"} for i in range(2)],
        "lab/assistant-messages": [{"text": f"a{i}"} for i in range(4)], "lab/par-events": [PAR] * 5}))
    session = started(tmp_path).sessions()[0]
    assert (session.count, session.par_count) == (3, 3)
    assert session.error == ("lab/assistant-messages: 3 messages over the limit of 3 left out; "
                             "lab/par-events: 2 over the limit of 3 left out")


def test_rescans_find_new_changed_and_removed_archives(tmp_path):
    clock = task.Clock()
    source = started(tmp_path / "later", clock)  # a folder created after the start
    assert source.sessions() == []
    samples = write_archives(tmp_path / "later")
    clock.advance(archive.RESCAN_SECONDS)
    assert len(source.sessions()) == len(samples)
    ident, sample = next(iter(samples.items()))
    path = tmp_path / "later" / f"{ident}.json"
    changed = futon3_archive(sample, pars=[PAR])
    changed["lab/user-messages"] = changed["lab/user-messages"][:1]
    path.write_bytes(orjson.dumps(changed))
    unchanged = next(session for session in source.sessions() if session.session_id != ident)
    clock.advance(archive.RESCAN_SECONDS)
    session = source.lookup(ident)
    first = changed["lab/user-messages"][0]["text"]
    assert (session.par_count, viewer_events(source, session)[0]["text"]) == (1, first)
    assert next(s for s in source.sessions() if s.session_id == unchanged.session_id) is unchanged  # not re-read
    path.unlink()
    clock.advance(archive.RESCAN_SECONDS)
    assert source.lookup(ident) is None and len(source.sessions()) == len(samples) - 1


def test_symlinks_out_of_the_folder_are_not_archives(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_bytes(orjson.dumps({"lab/session-id": "secret"}))
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "link.json").symlink_to(outside)
    source = started(tmp_path / "archives")
    assert source.sessions() == [] and Catalog([source]).by_path(str(outside)) is None


def test_read_lines_pages_by_bytes(tmp_path):
    write_archives(tmp_path)
    source = started(tmp_path)
    session = max(source.sessions(), key=lambda s: s.count)
    pages, start = [], 0
    while start < session.count:
        page = source.read_lines(session, start, max_bytes=200)
        assert page and (len(page) == 1 or sum(len(line) + 1 for line in page) <= 200)
        pages.extend(page)
        start += len(page)
    assert pages == source.read_lines(session, 0)
