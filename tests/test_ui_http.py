"""
The web UI's HTTP side on a real daemon: where a browser pointed at the port goes,
its static files, and PARs written with `POST /fulab/lab/sessions/<id>/pars`,
read back from the `.par.edn` sidecar.
"""

import re
import urllib.error
import urllib.request
from urllib.parse import quote

import edn_format
import orjson
import pytest
from websockets.sync.client import connect

from tests.fixtures import get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)

QUESTIONS = {"intention": "Find why resumes stalled", "happening": "The ack came before fsync",
             "perspectives": "The operator saw gaps", "learned": "Ack only when durable",
             "forward": "Keep the crash test"}


def upload(daemon, session_id: str, lines: list[str]):
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": session_id, "source": "claude",
                              "events": lines}).decode())
        reply = orjson.loads(ws.recv(timeout=30))
    assert reply["type"] == "ack", reply


def post(daemon, name: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request = urllib.request.Request(f"{daemon.http}/fulab/lab/sessions/{quote(name, safe='')}/pars", data=data,
                                     headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def fetch(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers, response.read()


def stored_pars(daemon, safe_id: str) -> list:
    return list(edn_format.loads((daemon.root / f"{safe_id}.par.edn").read_text()))


@pytest.fixture
def claude_session(daemon):
    sample = next(p for p in sample_files() if p.name.startswith("1af7fc5e"))
    upload(daemon, "team/alpha:1", sample_lines(sample))
    entry = get_json(daemon.http + "/fulab/lab/sessions")["sessions"][0]
    assert entry["session-id"] == "team/alpha:1" and entry["id"] != "team/alpha:1"
    return entry


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_the_port_itself_redirects_to_the_ui_whose_url_the_daemon_logged(daemon):
    with pytest.raises(urllib.error.HTTPError) as redirected:
        urllib.request.build_opener(NoRedirects).open(daemon.http + "/", timeout=30)
    assert redirected.value.code == 302 and redirected.value.headers["location"] == "/fulab/lab/"
    status, headers, body = fetch(daemon.http + "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in body.lower()
    with pytest.raises(urllib.error.HTTPError) as other:
        fetch(daemon.http + "/?x=1")  # only the bare port redirects; `/?path=` is the old viewers' WebSocket
    assert other.value.code == 404
    logged = daemon.wait_for_log(r"web UI at ")
    assert logged.endswith(f"web UI at http://127.0.0.1:{daemon.port}/fulab/lab/")


def test_ui_files_are_served_under_the_prefix_without_external_references(daemon):
    for path, kind in [("/fulab/lab/", "text/html"), ("/fulab/lab/?session=x&token=t", "text/html"),
                       ("/fulab/lab/app.js", "text/javascript"), ("/fulab/lab/app.css", "text/css")]:
        status, headers, body = fetch(daemon.http + path)
        assert status == 200 and headers["content-type"].startswith(kind), path
        assert headers["cache-control"] == "no-cache"
        assert not re.search(rb"""(src|href)=["']?(https?:)?//|@import|https?://""", body), path
    _, _, index = fetch(daemon.http + "/fulab/lab/")
    assert b'src="app.js"' in index and b'href="app.css"' in index
    _, headers, _ = fetch(daemon.http + "/fulab/lab")
    assert headers.get_content_type() == "text/html"  # redirected to /fulab/lab/


def test_a_posted_par_is_stored_in_the_sidecar_by_listing_id_or_session_id(daemon, claude_session):
    safe = claude_session["id"]
    status, reply = post(daemon, safe, {"title": " Stalled resumes ", "tags": "durability, acks,acks",
                                        "questions": QUESTIONS})
    assert status == 201 and reply["ok"] and not reply["dedup"]
    par = reply["par"]
    assert (par["title"], par["tags"], par["questions"]) == ("Stalled resumes", ["durability", "acks"], QUESTIONS)
    assert re.fullmatch(r"par-[0-9a-f]{16}", par["id"]) and par["timestamp"].endswith("Z")

    status, second = post(daemon, "team/alpha:1", {"title": "Second", "tags": ["x"],
                                                   "questions": {"learned": "by raw id too"}})
    assert status == 201

    first_stored, second_stored = stored_pars(daemon, safe)
    K = edn_format.Keyword
    assert first_stored[K("id")] == par["id"] and first_stored[K("title")] == "Stalled resumes"
    assert list(first_stored[K("tags")]) == [K("durability"), K("acks")]
    assert dict(first_stored[K("questions")]) == {K(key): value for key, value in QUESTIONS.items()}
    assert second_stored[K("questions")] == {K("learned"): "by raw id too"}
    listed = get_json(f"{daemon.http}/fulab/lab/sessions/{safe}/pars")["pars"]
    assert [p["id"] for p in listed] == [par["id"], second["par"]["id"]]
    assert get_json(daemon.http + "/fulab/lab/sessions")["sessions"][0]["pars"] == 2


def test_posting_the_same_par_id_twice_stores_it_once(daemon, claude_session):
    body = {"id": "par-retry-1", "title": "Retried", "questions": {"forward": "idempotent"}}
    assert post(daemon, claude_session["id"], body)[0] == 201
    status, reply = post(daemon, claude_session["id"], body)
    assert status == 200 and reply["dedup"] and reply["par"]["id"] == "par-retry-1"
    assert len(stored_pars(daemon, claude_session["id"])) == 1


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    ({"tags": ["a"]}, "non-empty \"title\""),
    ({"title": "   "}, "non-empty \"title\""),
    ({"title": "t", "tags": [1]}, "\"tags\" must be"),
    ({"title": "t", "tags": ["two words"]}, "contains a space"),
    ({"title": "t", "questions": "all good"}, "\"questions\" must be an object"),
    ({"title": "t", "questions": {"mood": "fine"}}, "unknown question(s) mood"),
    ({"title": "t", "questions": {"learned": 3}}, "must be a string"),
])
def test_a_bad_par_is_refused_with_a_clear_error_and_nothing_is_stored(daemon, claude_session, body, fragment):
    status, reply = post(daemon, claude_session["id"], body)
    assert status == 400 and reply["err"] == "bad-par" and fragment in reply["detail"], reply
    assert not (daemon.root / f"{claude_session['id']}.par.edn").exists()


def test_an_oversized_body_and_an_unknown_session_are_refused(daemon, claude_session):
    status, reply = post(daemon, claude_session["id"], {"title": "t", "questions": {"learned": "x" * 300_000}})
    assert status == 413 and reply["err"] == "too-large"
    status, reply = post(daemon, "no-such-session", {"title": "t"})
    assert status == 404 and reply["err"] == "unknown-session" and "/fulab/lab/sessions" in reply["detail"]
    assert not (daemon.root / f"{claude_session['id']}.par.edn").exists()
    assert not (daemon.root / "no-such-session.par.edn").exists()


def test_a_posted_par_reaches_an_open_viewer_live(daemon, claude_session):
    with connect(f"{daemon.url}/fulab/lab/stream/ws?session={quote(claude_session['id'])}", max_size=None) as viewer:
        frame = orjson.loads(viewer.recv(timeout=30))
        assert frame["type"] == "init" and frame["par-count"] == 0
        while frame.get("type") != "history-end":
            frame = orjson.loads(viewer.recv(timeout=30))
        status, reply = post(daemon, claude_session["id"], {"title": "Live", "tags": ["ui"], "questions": QUESTIONS})
        assert status == 201
        event = orjson.loads(viewer.recv(timeout=30))["event"]
    assert (event["type"], event["par-id"], event["title"], event["tags"]) == ("par", reply["par"]["id"], "Live", ["ui"])
    assert event["questions"] == QUESTIONS and event["par-index"] == 0
