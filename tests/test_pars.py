"""
One PAR check for every route, in the real store on real files: typed fields
(`bad-par` naming the field), sizes and counts, content-derived ids, the
author, no PARs for sessions without lines, and viewers that survive any
sidecar content.
"""

import os
import secrets
import urllib.error
import urllib.request

import edn_format
import orjson
import pytest
from websockets.sync.client import connect

from fulabd import events
from fulabd.messages import ProtocolError
from fulabd.par_schema import MAX_PAR_BYTES, checked_par
from tests.fixtures import Daemon, get_json
from tests.test_store import make_store, result_of

K = edn_format.Keyword


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_a_par_nested_to_the_limit_is_kept():
    assert checked_par({"title": "t", "sessions": nested(31)})["sessions"] == nested(31)


@pytest.mark.parametrize("par, field", [
    ("a string", "par"),
    ({"tags": ["a"]}, "title"),
    ({"text": "  ", "par-id": "p1"}, "title"),
    ({"text": "old shape", "title": ""}, "title"),  # a title given must be one
    ({"title": 5}, "title"),
    ({"title": "t", "tags": 5}, "tags"),
    ({"title": "t", "tags": [1]}, "tags"),
    ({"title": "t", "questions": ["x"]}, "questions"),
    ({"title": "t", "questions": {"learned": 3}}, "questions"),
    ({"title": "t", "timestamp": 1767225600}, "timestamp"),
    ({"title": "t", "timestamp": "yesterday"}, "timestamp"),
    ({"title": "t", "lines": [3, 1]}, "lines"),
    ({"title": "t", "lines": [-1, 2]}, "lines"),
    ({"title": "t", "lines": [1, 2, 3]}, "lines"),
    ({"title": "t", "lines": [True, 2]}, "lines"),
    ({"title": "t", "lines": "1-2"}, "lines"),
    ({"title": "t", "id": 7}, "id"),
    ({"title": "t", "author": 7}, "author"),
    ({"title": "t", "questions": {"learned": "x" * MAX_PAR_BYTES}}, "par"),
    ({"title": "t", "sessions": nested(33)}, "par"),     # deeper than the sidecar's writer may go
    ({"title": "t", "sessions": nested(1000)}, "par"),   # deeper than JSON is written
])
def test_a_bad_par_is_refused_naming_the_field(par, field):
    with pytest.raises(ProtocolError) as refused:
        checked_par(par)
    assert refused.value.code == "bad-par" and refused.value.extra["field"] == field, refused.value.detail


def test_an_old_lab_par_with_text_and_no_title_is_titled_as_the_old_lab_showed_it():
    par = checked_par({"text": "hello", "par-id": "p1", "tags": ["a"], "timestamp": "2026-01-31T20:15:41Z"})
    assert (par["title"], par["text"], par["id"], par["tags"]) == ("Session Review", "hello", "p1", ["a"])
    assert checked_par({"summary": "what happened"})["title"] == "Session Review"


def test_a_par_without_id_gets_one_from_its_content():
    par = {"title": "t", "tags": "a, b", "questions": {"learned": "x"}}
    assert checked_par(par)["id"] == checked_par(dict(par))["id"] == checked_par(par | {"tags": ["a", "b"]})["id"]
    assert checked_par(par)["id"] != checked_par(par | {"title": "u"})["id"]
    assert checked_par(par)["id"] != checked_par(par, author="alice")["id"]


def test_the_store_refuses_a_par_for_a_session_without_lines_and_creates_no_files(tmp_path):
    store, _ = make_store(tmp_path)
    with pytest.raises(ProtocolError) as refused:
        result_of(store.add_par("ghost", {"title": "t"}))
    assert refused.value.code == "unknown-session"
    assert os.listdir(tmp_path) == [] and store.get("ghost") is None and store.sessions() == []


def test_the_same_par_sent_twice_is_stored_once_with_its_author_and_lines(tmp_path):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"a", b"b", b"c"]))
    par = {"title": "t", "lines": [0, 2], "timestamp": "2026-06-05T14:03:00Z"}
    first = result_of(store.add_par("s", par, author="alice"))
    again = result_of(store.add_par("s", par, author="alice"))
    assert (first[0], first[2], again[0], again[2]) == (0, True, 0, False)
    [stored] = edn_format.loads((tmp_path / "s.par.edn").read_text())
    assert stored[K("author")] == "alice" and list(stored[K("lines")]) == [0, 2]
    assert stored[K("timestamp")] == "2026-06-05T14:03:00Z"
    assert "[0 2]" in (tmp_path / "s.par.edn").read_text()


def test_a_token_name_overrides_the_pars_own_author(tmp_path):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"a"]))
    _, par, _ = result_of(store.add_par("s", {"title": "t", "author": "mallory"}, author="alice"))
    assert par["author"] == "alice"


def test_a_session_takes_at_most_the_documented_number_of_pars(tmp_path, monkeypatch):
    monkeypatch.setattr("fulabd.store.pars.MAX_PARS_PER_SESSION", 3)
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"a"]))
    for number in range(3):
        result_of(store.add_par("s", {"title": f"t{number}"}))
    with pytest.raises(ProtocolError) as refused:
        result_of(store.add_par("s", {"title": "one more"}))
    assert refused.value.code == "bad-par" and "3 PARs" in refused.value.detail
    assert len(edn_format.loads((tmp_path / "s.par.edn").read_text())) == 3


@pytest.mark.parametrize("par", [{"title": "x", "tags": 5}, {"title": ["x"]}, 5, "text", None, {"tags": {"a": 1}}])
def test_a_bad_par_in_an_old_sidecar_becomes_a_raw_viewer_event(par):
    event = events.par_event(par, 3)
    assert event["type"] == "raw" and event["par-index"] == 3 and event["data"] == par
    orjson.dumps(event)


def test_a_good_pars_lines_reach_the_viewer_event():
    assert events.par_event({"title": "t", "lines": [4, 9]}, 0)["lines"] == [4, 9]


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


@pytest.mark.slow
def test_every_route_records_the_token_name_as_author_and_refuses_the_same_way(tmp_path):
    token = secrets.token_urlsafe(32)
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{token} alice\n")
    token_file.chmod(0o600)
    daemon = Daemon(tmp_path / "remote", "--token-file", str(token_file)).start()
    bearer = {"Authorization": "Bearer " + token}
    try:
        with connect(daemon.url + "/fulab/lab/upload/ws", additional_headers=bearer) as ws:
            assert call(ws, {"type": "par", "session-id": "s", "par": {"title": "early"}})["err"] == "unknown-session"
            assert [p.name for p in daemon.root.iterdir()] in ([], [".index"])  # .index: the search index
            assert call(ws, {"type": "init", "session-id": "s", "events": ["{}"]})["count"] == 1
            assert call(ws, {"type": "par", "session-id": "s", "par": {"title": "ws", "author": "bob"}})["type"] == "ack"
            refused = call(ws, {"type": "par", "session-id": "s", "par": {"title": "t", "timestamp": 5}})
            assert (refused["err"], refused["field"]) == ("bad-par", "timestamp")
        request = urllib.request.Request(f"{daemon.http}/fulab/lab/sessions/s/pars", method="POST",
                                         data=orjson.dumps({"title": "http", "lines": [0, 0]}),
                                         headers=bearer | {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
        bad = urllib.request.Request(f"{daemon.http}/fulab/lab/sessions/s/pars", method="POST",
                                     data=orjson.dumps({"title": "t", "timestamp": 5}),
                                     headers=bearer | {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(bad, timeout=30)
        assert answer.value.code == 400 and orjson.loads(answer.value.read())["field"] == "timestamp"
    finally:
        daemon.stop()
    stored = edn_format.loads((daemon.root / "s.par.edn").read_text())
    assert [(par[K("title")], par[K("author")]) for par in stored] == [("ws", "alice"), ("http", "alice")]
    assert list(stored[1][K("lines")]) == [0, 0]


@pytest.mark.slow
def test_a_session_with_a_poisoned_sidecar_is_listed_and_viewable(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    (root / "s.jsonl").write_bytes(b'{"type":"user","message":{"content":"hi"}}\n')
    (root / "s.par.edn").write_text('[{:title "x" :tags 5} 7 {:title "fine" :id "p2"}]')
    daemon = Daemon(root).start()
    try:
        [entry] = get_json(daemon.http + "/fulab/lab/sessions")["sessions"]
        assert entry["pars"] == 3
        with connect(f"{daemon.url}/fulab/lab/stream/ws?session=s", max_size=None) as viewer:
            frames = [orjson.loads(viewer.recv(timeout=30))]
            while frames[-1]["type"] != "history-end":
                frames.append(orjson.loads(viewer.recv(timeout=30)))
    finally:
        daemon.stop()
    assert frames[0]["type"] == "init"
    seen = [event for frame in frames for event in frame.get("events", [frame.get("event")]) if event]
    pars = [event for event in seen if event.get("par-index") is not None]
    assert [event["type"] for event in pars] == ["raw", "raw", "par"] and pars[2]["par-id"] == "p2"
