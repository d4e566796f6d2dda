"""
Session summaries, in memory: every field of every sample's summary against what
tests/summary_expectations.py reads from the raw lines; the same summary whether
caught up from the file or followed line by line; live lines that arrive while a
file is being caught up; sub-agents rolled up; the price table and its errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.logger import capturedLogs, formatEvent

from fulabd import events, formats
from fulabd.prices import BadPrices, PriceTable
from fulabd.summaries import Summaries, service
from fulabd.summaries.accumulator import Accumulator
from fulabd.uploader.identity import identify
from tests.fixtures import sample_files
from tests.summary_expectations import expected

# Keys the formats look at, so that random lines reach their code paths.
KEYS = ("type", "payload", "message", "content", "usage", "id", "model", "name", "input", "arguments", "output",
        "call_id", "role", "text", "timestamp", "info", "total_token_usage", "input_tokens", "output_tokens",
        "toolUseResult", "agentId", "sessionId", "customTitle", "aiTitle", "summary", "is_error", "tool_use_id",
        "cache_creation", "new_thread_id", "isMeta", "file_path", "response_item", "event_msg", "turn_context",
        "function_call", "custom_tool_call", "function_call_output", "token_count", "user", "assistant",
        "tool_use", "tool_result", "apply_patch", "Edit", "Task", "custom-title")
FIELDS = ("title", "started", "ended", "duration-s", "models", "turns", "tool-calls", "tool-errors",
          "files-touched", "commands", "subagents", "tokens", "cost-usd")


class StoredFile:
    """A session as the catalog hands it out: a file, its id, metadata and complete-line count."""

    def __init__(self, path: Path, meta: dict | None = None):
        identity = identify(path)
        self.path = str(path)
        self.session_id = identity.session_id
        self.safe_id = identity.session_id.replace("/", "_")
        self.meta = {**identity.meta, **(meta or {})}
        self.count = len(path.read_bytes().split(b"\n")) - 1


class Folder:
    """The catalog interface the summaries use, over a list of sessions."""

    def __init__(self, sessions=()):
        self.listed = list(sessions)

    def sessions(self):
        return self.listed

    def by_id(self, ident):
        return next(((s, self) for s in self.listed if ident in (s.session_id, s.safe_id)), None)


def in_line(function, *args):
    return defer.maybeDeferred(function, *args)


def caught_up(*sessions) -> Summaries:
    summaries = Summaries(Folder(sessions), PriceTable.shipped(), task.Clock(), run_in_thread=in_line)
    summaries.startService()
    summaries.clock.advance(0)
    return summaries


def source_of(path: Path) -> str:
    return "codex" if "codex" in path.parts else "claude"


@pytest.mark.parametrize("path", sample_files(), ids=lambda path: path.name[:40])
def test_every_field_of_every_sample_matches_the_raw_lines(path):
    session = StoredFile(path)
    summary = caught_up(session).get(session.session_id)
    want = expected(path, source_of(path))
    if path.parent.name == "subagent-layout":  # its sub-agent's own file is not in this catalog
        assert want["subagents"] == []
    for field in FIELDS:
        assert summary[field] == want[field], field
    assert (summary["source"], summary["project"], summary["lines"]) == (
        source_of(path), session.meta["project"], session.count)
    assert summary["tokens-with-subagents"] == summary["tokens"]


def test_known_titles_and_the_once_per_message_rule():
    by_name = {path.name[:8]: path for path in sample_files() if "codex" not in path.parts}
    titles = {name: caught_up(StoredFile(path)).get(StoredFile(path).session_id)["title"]
              for name, path in by_name.items()}
    assert titles["fe5e1c67"] == "Empty Repo Setup: CLAUDE.md Foundation Created"  # its summary line
    assert titles["1af7fc5e"] == "/init"  # a slash command, not the CLAUDE.md text it expands to
    assert titles["5c0375b4"].startswith("/orchestrator @CLAUDE.md")
    assert titles["agent-se"] == "Stage0 small fixture"  # its custom-title, over its ai-title and summary
    path = by_name["fe5e1c67"]
    tokens = caught_up(StoredFile(path)).get(StoredFile(path).session_id)["tokens"]
    naive = sum(line["message"]["usage"]["output_tokens"] for line in map(json.loads, path.read_text().splitlines())
                if line.get("type") == "assistant")
    assert tokens["output"] < naive  # usage repeated on each block of a response is counted once


@pytest.mark.parametrize("path", sample_files(), ids=lambda path: path.name[:40])
def test_following_the_lines_gives_the_same_summary_as_reading_the_file(path):
    session = StoredFile(path)
    read = caught_up(session).get(session.session_id)
    followed = Summaries(Folder(), PriceTable.shipped(), task.Clock(), run_in_thread=in_line)
    lines = path.read_bytes().split(b"\n")[:-1]
    for first in range(0, len(lines), 7):
        followed.lines_appended(session, first, lines[first:first + 7])
    followed.clock.advance(0)
    assert followed.get(session.session_id) == read


def test_lines_that_arrive_while_the_file_is_read_are_folded_in_once(tmp_path):
    sample = next(path for path in sample_files() if path.name.startswith("1af7fc5e"))
    path = tmp_path / sample.name
    lines = sample.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join(lines[:10]) + b"\n")
    session = StoredFile(path)
    pending = []
    summaries = Summaries(Folder([session]), PriceTable.shipped(), task.Clock(),
                          run_in_thread=lambda function, *args: pending.append((function, args)) or deferred)
    deferred = defer.Deferred()
    summaries.startService()
    summaries.clock.advance(0)
    assert summaries.get(session.session_id) is None  # still reading the file
    with open(path, "ab") as f:
        f.write(b"\n".join(lines[10:]) + b"\n")
    session.count = len(lines)
    summaries.lines_appended(session, 10, lines[10:20])
    summaries.lines_appended(session, 20, lines[20:])
    summaries.clock.advance(0)
    (function, args), = pending
    deferred.callback(function(*args))  # the file has grown: only the 10 lines there when it began are read
    assert summaries.get(session.session_id) == caught_up(StoredFile(path)).get(session.session_id)


def test_a_live_line_changes_the_summary_and_marks_the_session_live(tmp_path):
    sample = next(path for path in sample_files() if path.name.startswith("06090cb1"))
    session = StoredFile(sample)
    summaries = caught_up(session)
    before = summaries.get(session.session_id)
    entry = summaries.listing_fields(session, summaries.clock.seconds())
    assert entry["live"] is False and entry["summary"]["title"] == before["title"] == "[REDACTED_PROMPT]"
    assert "files-touched" not in entry["summary"]
    more = [orjson.dumps(line) for line in (
        {"type": "custom-title", "customTitle": "Named by hand", "sessionId": session.session_id},
        {"type": "user", "timestamp": "2026-06-05T05:10:00.000Z", "sessionId": session.session_id,
         "message": {"role": "user", "content": "and now the tests"}},
        {"type": "assistant", "timestamp": "2026-06-05T05:10:05.000Z", "sessionId": session.session_id,
         "message": {"id": "msg_new", "model": "claude-opus-4-7", "role": "assistant",
                     "content": [{"type": "tool_use", "id": "toolu_1", "name": "Write",
                                  "input": {"file_path": "/w/test_x.py"}}],
                     "usage": {"input_tokens": 100, "output_tokens": 1000, "cache_read_input_tokens": 0,
                               "cache_creation_input_tokens": 0}}})]
    summaries.clock.advance(3600)
    summaries.lines_appended(session, session.count, more)
    assert summaries.get(session.session_id) == before  # folded in on the next turn, after the acks
    summaries.clock.advance(0)
    after = summaries.get(session.session_id)
    assert after["title"] == "Named by hand"
    assert (after["turns"], after["ended"], after["files-touched"]) == (2, "2026-06-05T05:10:05.000Z", ["/w/test_x.py"])
    assert after["tool-calls"] == {"Write": 1}
    assert after["tokens"]["output"] == before["tokens"]["output"] + 1000
    assert after["cost-usd"] == pytest.approx(before["cost-usd"] + (100 * 5 + 1000 * 25) / 1e6)
    assert summaries.listing_fields(session, summaries.clock.seconds())["live"] is True
    summaries.clock.advance(summaries.live_seconds + 1)
    assert summaries.listing_fields(session, summaries.clock.seconds())["live"] is False


def test_sub_agent_sessions_roll_up_into_their_parent(tmp_path):
    layout = next(path for path in sample_files() if path.parent.name == "subagent-layout")
    folder = tmp_path / "projects"
    shutil.copytree(layout.parent, folder)
    parent_path = folder / layout.name
    child_path = next(folder.rglob("agent-*.jsonl"))
    with open(child_path, "ab") as f:  # the sub-agent spends tokens
        f.write(orjson.dumps({"type": "assistant", "timestamp": "2025-12-16T00:00:03.000Z", "message": {
            "id": "msg_c", "model": "claude-haiku-4-5-20251001", "role": "assistant", "content": [],
            "usage": {"input_tokens": 7, "output_tokens": 70, "cache_read_input_tokens": 700,
                      "cache_creation_input_tokens": 7000}}}) + b"\n")
    parent, child = StoredFile(parent_path), StoredFile(child_path)
    summaries = caught_up(parent, child)
    rolled = summaries.get(parent.session_id)
    assert child.session_id in rolled["subagents"]
    assert rolled["tokens"] == dict.fromkeys(("input", "output", "cache-read", "cache-write"), 0)
    assert rolled["tokens-with-subagents"] == summaries.get(child.session_id)["tokens"] == {
        "input": 7, "output": 70, "cache-read": 700, "cache-write": 7000}
    assert summaries.get(child.session_id)["parent-session-id"] == parent.session_id


def test_codex_failed_commands_and_patched_files_are_counted():
    agent = formats.BY_NAME["codex"]
    patch = "*** Begin Patch\n*** Update File: src/a.py\n@@\n*** Add File: b.md\n+x\n*** End Patch\n"
    failed = agent.facts({"type": "response_item", "payload": {
        "type": "function_call_output", "call_id": "c1", "output": "Exit code: 2\nWall time: 0.1 seconds\nOutput:\n"}})
    legacy = agent.facts({"type": "function_call_output", "call_id": "c2",
                          "output": '{"output":"x","metadata":{"exit_code":1}}'})
    passed = agent.facts({"type": "response_item", "payload": {
        "type": "function_call_output", "call_id": "c3", "output": "Exit code: 0\nOutput:\nok"}})
    patched = agent.facts({"type": "response_item", "payload": {
        "type": "custom_tool_call", "call_id": "c4", "name": "apply_patch", "input": patch}})
    wrapped = agent.facts({"type": "response_item", "payload": {
        "type": "function_call", "call_id": "c5", "name": "apply_patch",
        "arguments": orjson.dumps({"input": patch}).decode()}})
    assert (failed.errors, legacy.errors, passed.errors) == (1, 1, 0)
    assert patched.files == wrapped.files == ["src/a.py", "b.md"]


def test_a_model_without_a_price_costs_null_and_a_dated_one_is_priced():
    table = PriceTable.shipped()
    tokens = {"input": 1_000_000, "output": 0, "cache-read": 0, "cache-write": 0}
    assert table.cost({"claude-sonnet-4-20250514": tokens}) == table.models["claude-sonnet-4"]["input"]
    assert table.cost({"gpt-9-imaginary": tokens}) is None
    assert table.cost({None: tokens}) is None
    assert table.cost({"gpt-9-imaginary": dict.fromkeys(tokens, 0)}) == 0.0
    assert table.date == json.loads(Path(formats.__file__).parent.parent.joinpath("data/prices.json").read_text())[
        "date"]


def test_a_price_file_replaces_the_table_and_a_bad_one_says_what_to_fix(tmp_path):
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"date": "2030-01-01", "models": {
        "m": {"input": 1, "output": 2, "cache-read": 0.1, "cache-write": 1.25}}}))
    table = PriceTable.load(str(good))
    assert (table.date, list(table.models)) == ("2030-01-01", ["m"])
    for body, message in (("{", "not valid JSON"), ("[]", "needs a \"date\""),
                          ('{"date":"d","models":{"m":{"input":1}}}', "needs the prices"),
                          ('{"date":"d","models":{"m":{"input":-1,"output":1,"cache-read":1,"cache-write":1}}}',
                           "0 or more")):
        good.write_text(body)
        with pytest.raises(BadPrices, match=message):
            PriceTable.load(str(good))
    with pytest.raises(BadPrices, match="cannot read"):
        PriceTable.load(str(tmp_path / "missing.json"))


def test_the_daemon_refuses_a_bad_price_file_and_a_live_window_that_is_not_positive(tmp_path):
    from twisted.python import usage

    from fulabd.tap import Options

    bad = tmp_path / "prices.json"
    bad.write_text('{"date": "2030-01-01"}')
    with pytest.raises(usage.UsageError, match="--prices: .*needs a \"date\" string and a \"models\" object"):
        Options().parseOptions(["--prices", str(bad)])
    with pytest.raises(usage.UsageError, match="--live-window must be positive"):
        Options().parseOptions(["--live-window", "0"])
    defaults = Options()
    defaults.parseOptions([])
    assert (defaults["live-window"], defaults["price-table"].date) == (60.0, PriceTable.shipped().date)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(
                        st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6), max_leaves=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8), max_size=6),
       st.sampled_from(sorted(formats.BY_NAME)))
def test_any_line_of_any_shape_is_folded_and_shown_without_error(lines, source):
    accumulator = Accumulator(formats.BY_NAME[source])
    for index, line in enumerate(lines):
        accumulator.add(orjson.dumps(line))
        event = events.normalize(orjson.dumps(line), index)
        assert event is None or event["line"] == index
    summary = accumulator.summary(PriceTable.shipped())
    assert summary["lines"] == len(lines)
    assert orjson.loads(orjson.dumps(summary)) == summary


def test_a_rewritten_local_file_is_read_again(tmp_path):
    samples = {path.name[:8]: path for path in sample_files()}
    path = tmp_path / "x" / "0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f.jsonl"
    path.parent.mkdir()
    shutil.copy(samples["1af7fc5e"], path)
    folder = Folder([StoredFile(path)])
    summaries = caught_up(*folder.listed)
    assert summaries.get(folder.listed[0].session_id)["title"] == "/init"
    shutil.copy(samples["06090cb1"], path)  # indexed afresh by the local source: a new session object
    folder.listed = [StoredFile(path)]
    assert summaries.of(folder.listed[0])["title"] == "[REDACTED_PROMPT]"  # as the listing asks
    assert summaries.get(folder.listed[0].session_id)["title"] == "[REDACTED_PROMPT]"


@pytest.mark.parametrize("path", sample_files(), ids=lambda path: path.name[:40])
def test_catching_up_in_slices_smaller_than_a_line_gives_the_same_summary(path, monkeypatch):
    session = StoredFile(path)
    whole = caught_up(session).get(session.session_id)
    monkeypatch.setattr(service, "SLICE_BYTES", 64)  # most lines span several slices
    assert caught_up(StoredFile(path)).get(session.session_id) == whole


def one_turn(clock: task.Clock):
    """What a reactor turn runs: the calls due as it starts, not those they schedule (`advance` runs both)."""
    for call in [call for call in clock.calls if call.getTime() <= clock.seconds()]:
        clock.calls.remove(call)
        call.called = True
        call.func(*call.args, **call.kw)


def test_the_sessions_found_at_start_up_are_taken_up_a_slice_per_turn_and_all_summarised(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "TRACK_SLICE", 2)
    sample = sample_files()[0]
    sessions = []
    for number in range(5):
        copy = tmp_path / f"{number}-{sample.name}"
        copy.write_bytes(sample.read_bytes())
        sessions.append(StoredFile(copy))
    alone = caught_up(StoredFile(sample))
    [expected] = [alone._summary(tracked) for tracked in alone._tracked.values()]
    summaries = Summaries(Folder(sessions), PriceTable.shipped(), task.Clock(), run_in_thread=in_line)
    with capturedLogs() as events:
        summaries.startService()
        turns = []
        while summaries.clock.calls:
            one_turn(summaries.clock)
            turns.append(len(summaries._tracked))
    assert turns == [2, 4, 5], "a slice a turn"
    done = [formatEvent(event) for event in events if "up to date" in formatEvent(event)]
    assert done == [done[0]] and "summaries of 5 sessions are up to date" in done[0], done
    assert all(summaries._summary(summaries._tracked[session.path]) == expected for session in sessions)
