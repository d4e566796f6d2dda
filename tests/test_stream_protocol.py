"""
The viewer stream in memory (tests/memory.py): history pages, offsets, live
lines and PARs, refusals, and what happens when a viewer stops reading, on
the real site and store.
"""

import os
from urllib.parse import urlencode

import pytest

from fulabd.events import DUPLICATE_EVENT_MSGS
from fulabd.stream import FIRST_FRAME_BYTES
from tests.fixtures import sample_files, sample_lines
from tests.test_upload_protocol import upload

CLAUDE_REAL = "fe5e1c67"
CODEX_REAL = "rollout-2026-06-05T10-28-20-019e9625"
FIRST_FRAME_LIMIT = FIRST_FRAME_BYTES + 256 * 1024  # about 1 MB of events, plus at most one (bounded) event
PAR_A = {"id": "par-a", "title": "First", "tags": ["x"], "questions": {"intention": "learn", "learned": "a"}}
PAR_B = {"id": "par-b", "title": "Second", "tags": ["y"], "questions": {"happening": "b"}}


def sample(prefix: str):
    return next(path for path in sample_files() if path.name.startswith(prefix))


def store(lab, session_id: str, lines: list[str], pars: list[dict] = ()) -> str:
    """Upload a session (and PARs); its listed path."""
    assert upload(lab, {"type": "init", "session-id": session_id, "events": lines})["count"] == len(lines)
    for par in pars:
        assert upload(lab, {"type": "par", "session-id": session_id, "par": par})["type"] == "ack"
    return lab.store.get(session_id).path


def viewer(lab, url_path: str = "/", stall_after: int | None = None, **query):
    return lab.client(url_path + "?" + urlencode(query), stall_after=stall_after)


def history_of(frames: list[dict]):
    """(first frame, every history event, the history-end frame, the frames after it)."""
    head, *rest = frames
    assert head["type"] in ("init", "delta"), head
    history = list(head["events"])
    while rest and rest[0]["type"] == "event":
        history.append(rest.pop(0)["event"])
    end = rest.pop(0)
    assert end["type"] == "history-end", end
    return head, history, end, rest


def expected_lines(lines: list[str], start: int = 0) -> list[int]:
    """Line indexes a viewer gets from `start`: all but Codex event_msg duplicates."""
    import orjson

    def skipped(line):
        value = orjson.loads(line)
        return value.get("type") == "event_msg" and value["payload"].get("type") in DUPLICATE_EVENT_MSGS
    return [index for index, line in enumerate(lines) if index >= start and not skipped(line)]


def line_indexes(history: list[dict]) -> list[int]:
    return [event["line"] for event in history if event["line"] is not None]


def test_every_sample_streams_every_line_once_in_order_on_both_urls(lab):
    for number, path in enumerate(sample_files()):
        lines = sample_lines(path)
        listed = store(lab, f"{number}-{path.stem}", lines)
        for url_path, query in (("/", {"path": listed}), ("/fulab/lab/stream/ws", {"session": f"{number}-{path.stem}"})):
            head, history, end, after = history_of(viewer(lab, url_path, **query).take())
            assert (head["type"], head["path"], head["line-count"], head["offset"]) == ("init", listed, len(lines), 0)
            assert line_indexes(history) == expected_lines(lines), path
            assert end == {"type": "history-end", "line-count": len(lines), "par-count": 0} and after == []


def test_history_is_paged_in_bounded_frames(lab):
    lines = sample_lines(sample(CLAUDE_REAL)) * 8  # derived: a 6 MB session
    listed = store(lab, "big", lines)
    client = viewer(lab, path=listed)
    head, history, end, _ = history_of(client.take())
    assert head["more"] is True and client.sizes[0] <= FIRST_FRAME_LIMIT
    assert 0 < len(head["events"]) < len(lines)
    assert line_indexes(history) == list(range(len(lines)))
    assert end == {"type": "history-end", "line-count": len(lines), "par-count": 0}


def test_offset_and_par_offset_send_only_what_the_viewer_lacks(lab):
    lines = sample_lines(sample(CODEX_REAL))
    listed = store(lab, "c", lines, [PAR_A, PAR_B])
    # the old lab ignored the URL path
    head, history, end, _ = history_of(viewer(lab, "/fulab/lab/", path=listed, offset=4, par_offset=1).take())
    assert (head["type"], head["offset"], head["par-count"], head["new-par-count"]) == ("delta", 4, 2, 1)
    assert line_indexes(history) == expected_lines(lines, 4)
    pars = [event for event in history if event["type"] == "par"]
    assert [(par["par-id"], par["par-index"]) for par in pars] == [("par-b", 1)]
    assert pars[0]["text"] == "## PAR: Second\n\n**Intention:** \n\n**Happening:** b\n\n**Perspectives:** " \
                              "\n\n**Learned:** \n\n**Forward:** "
    assert end == {"type": "history-end", "line-count": len(lines), "par-count": 2}
    past = viewer(lab, path=listed, offset=len(lines) + 5, par_offset=9)
    head, history, end, _ = history_of(past.take())
    assert (head["offset"], head["new-par-count"], history) == (len(lines), 0, [])
    assert end == {"type": "history-end", "line-count": len(lines), "par-count": 2}  # what there is, not what was asked
    assert upload(lab, {"type": "events", "session-id": "c", "seq": len(lines), "events": ['{"n":1}']})["count"]
    assert [frame["event"]["line"] for frame in past.take()] == [len(lines)]  # the next line still comes
    head, _, _, _ = history_of(viewer(lab, path=listed, offset="x", par_offset="-3").take())
    assert (head["type"], head["offset"], head["new-par-count"]) == ("init", 0, 2)


def test_live_lines_and_pars_arrive_once_and_existing_pars_are_not_resent(lab):
    lines = sample_lines(sample(CLAUDE_REAL))
    listed = store(lab, "live", lines[:100], [PAR_A])
    watching = viewer(lab, path=listed)
    _, history, _, _ = history_of(watching.take())
    assert [event["par-id"] for event in history if event["type"] == "par"] == ["par-a"]
    up = lab.client()
    assert up.call({"type": "events", "session-id": "live", "seq": 100, "events": lines[100:103]})["count"] == 103
    assert [frame["event"]["line"] for frame in watching.take()] == [100, 101, 102]
    assert up.call({"type": "par", "session-id": "live", "par": PAR_A})["dedup"] is True
    assert up.call({"type": "par", "session-id": "live", "par": PAR_B})["dedup"] is False
    [par] = [frame["event"] for frame in watching.take()]
    assert (par["type"], par["par-id"], par["par-index"], par["title"]) == ("par", "par-b", 1, "Second")
    assert up.call({"type": "events", "session-id": "live", "seq": 100, "events": lines[100:104]})["count"] == 104
    assert [frame["event"]["line"] for frame in watching.take()] == [103]  # no re-sent line or PAR
    assert watching.call({"type": "ping"})["type"] == "pong"
    assert watching.call({"type": "event", "event": "x"})["err"] == "unknown-type"


def test_lines_stored_while_history_is_paging_are_sent_once(lab):
    lines = sample_lines(sample(CLAUDE_REAL)) * 16  # derived: a 12 MB session
    listed = store(lab, "race", lines[:-40])
    watching = viewer(lab, path=listed, stall_after=1)  # reads the first frame, then stops reading
    assert upload(lab, {"type": "events", "session-id": "race", "seq": len(lines) - 40,
                        "events": lines[-40:]})["count"] == len(lines)
    lab.unstall(watching)
    head, history, end, after = history_of(watching.take())
    assert head["line-count"] == len(lines) - 40
    assert end["line-count"] == len(lines)  # picked up by the pager, not lost between history and live
    assert line_indexes(history) == list(range(len(lines))) and after == []


def test_a_live_viewer_that_falls_behind_is_caught_up_from_disk(lab):
    lines = sample_lines(sample(CLAUDE_REAL)) * 4  # derived: 3 MB arriving in one message
    store(lab, "burst", lines[:10])
    watching = viewer(lab, "/fulab/lab/stream/ws", session="burst")
    history_of(watching.take())
    lab.stall(watching)  # the viewer stops reading: its socket fills up
    assert upload(lab, {"type": "events", "session-id": "burst", "seq": 10, "events": lines[10:]})["count"] == len(lines)
    assert watching.take() == []
    lab.unstall(watching)
    assert upload(lab, {"type": "par", "session-id": "burst", "par": PAR_A})["pars"] == 1
    frames = watching.take()
    assert [frame["type"] for frame in frames] == ["event"] * (len(lines) - 10 + 1)  # no second history-end
    assert line_indexes([frame["event"] for frame in frames]) == list(range(10, len(lines)))
    assert frames[-1]["event"]["par-id"] == "par-a"


def test_reconnecting_with_offset_loses_and_repeats_nothing(lab):
    lines = sample_lines(sample(CLAUDE_REAL)) * 8
    listed = store(lab, "again", lines[:3000], [PAR_A])
    first = viewer(lab, path=listed, stall_after=50)
    seen = first.take()
    assert seen[0]["more"] is True
    seen = seen[0]["events"] + [frame["event"] for frame in seen[1:]]
    first.sendClose(1000)
    lab.flush()
    up = lab.client()
    up.call({"type": "events", "session-id": "again", "seq": 3000, "events": lines[3000:3200]})
    up.call({"type": "par", "session-id": "again", "par": PAR_B})
    offset = max(line_indexes(seen)) + 1
    pars = sum(event["type"] == "par" for event in seen)
    _, history, _, _ = history_of(viewer(lab, path=listed, offset=offset, par_offset=pars).take())
    seen.extend(history)
    assert line_indexes(seen) == list(range(3200))
    assert [event["par-id"] for event in seen if event["type"] == "par"] == ["par-a", "par-b"]


def refusal(lab, url_path: str = "/", **query) -> dict:
    client = viewer(lab, url_path, **query)
    [reply] = client.take()
    assert client.close_code == 1008
    return reply


def test_paths_outside_the_served_sessions_get_one_identical_refusal(lab, tmp_path):
    root = lab.root
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"type":"user","message":{"content":"secret"}}\n')
    listed = store(lab, "s", ['{"a":1}'])
    os.symlink(secret, root / "leak.jsonl")  # a symlink in the store pointing outside it
    os.symlink("/etc/passwd", root / "late.jsonl")
    asked = ["/etc/passwd", f"{root}/../secret.jsonl", f"{root}/s.jsonl/../../secret.jsonl",
             f"{root}/../../../../../etc/passwd", str(root / "leak.jsonl"), str(root / "late.jsonl"),
             str(root / "missing.jsonl"), str(root / "s.meta.edn"), str(root), "s.jsonl"]
    replies = [refusal(lab, path=path) for path in asked]
    replies += [refusal(lab, "/fulab/lab/stream/ws", session=ident) for ident in ("leak", "../s", "nope")]
    for reply, path in zip(replies, asked + ["leak", "../s", "nope"]):
        assert reply.pop("path") == path
    assert all(reply == replies[0] for reply in replies)
    assert replies[0]["err"] == "invalid-path"
    assert viewer(lab, path=listed).take()[0]["events"][0]["data"] == {"a": 1}
    assert viewer(lab, path=f"{root}/./s.jsonl").take()[0]["path"] == listed  # the same file, spelled differently


def test_raw_streams_the_stored_lines(lab):
    lines = sample_lines(sample(CODEX_REAL))
    store(lab, "r", lines)
    head, history, _, _ = history_of(viewer(lab, "/fulab/lab/stream/ws", session="r", raw=1).take())
    assert head["raw"] is True and len(lab.stream.viewers) == 1
    assert [event["raw"] for event in history] == lines
    assert [event["line"] for event in history] == list(range(len(lines)))


def test_a_viewer_that_sends_a_big_message_is_closed_with_1009(lab):
    listed = store(lab, "quiet", ['{"type":"user"}'])
    watching = viewer(lab, path=listed)
    history_of(watching.take())
    watching.send("x" * 100_000)
    lab.flush()
    assert watching.close_code == 1009


@pytest.mark.parametrize("url_path", ["/", "/fulab/lab/stream/ws"])
def test_a_viewer_without_a_session_is_refused(lab, url_path):
    assert refusal(lab, url_path, offset=1)["err"] == "invalid-path"
