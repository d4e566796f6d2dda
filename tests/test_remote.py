"""
Remote labs (`--remote-source`): the merge logic in memory (an injected clock,
a `get` whose answers the test gives: refusals, garbage, timeouts, caching),
and the HTTP client against real twisted.web servers on loopback ports
(a good answer, an oversized one, one that never comes, no server at all).
"""

import orjson
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionLost
from twisted.python.usage import UsageError
from twisted.web import resource, server
from twisted.web.test.requesthelper import DummyRequest

from fulabd import remote
from fulabd.remote import HOP_HEADER, HttpFetcher, RemoteLab, RemoteLabs, TooLarge
from fulabd.tap import Options
from tests.fixtures import free_port

LAB_A = RemoteLab("a", "http://a.example:5056")
LAB_B = RemoteLab("b", "https://b.example", token="secret-token-of-b-0123")
GOOD = orjson.dumps({"ok": True, "sessions": [{"id": "s1", "session-id": "s1", "remote-source": "forged"}]})


class Gets:
    """`get` for RemoteLabs: records each request; the test fires its Deferred."""

    def __init__(self):
        self.asked: list[tuple[str, dict, defer.Deferred]] = []
        self.cancelled: list[str] = []

    def __call__(self, url, headers):
        d = defer.Deferred(lambda _: self.cancelled.append(url))
        self.asked.append((url, headers, d))
        return d

    def answer(self, index, status=200, body=GOOD):
        self.asked[index][2].callback((status, body))


def in_thread_now(function, *args):
    return defer.maybeDeferred(function, *args)


def labs(*given, clock=None, gets=None, **kw):
    return RemoteLabs(list(given), gets if gets is not None else Gets(), clock or task.Clock(),
                      run_in_thread=in_thread_now, **kw)


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, "not answered yet"
    return results[0]


def request(*headers):
    req = DummyRequest([b""])
    for name, value in headers:
        req.requestHeaders.setRawHeaders(name, [value])
    return req


def test_labs_are_asked_concurrently_with_the_hop_marker_and_their_token():
    gets = Gets()
    both = labs(LAB_A, LAB_B, gets=gets)
    d = both.merge(request(), {"ok": True, "sessions": [{"id": "local"}]})
    assert [url for url, _, _ in gets.asked] == ["http://a.example:5056/fulab/lab/sessions/active",
                                                 "https://b.example/fulab/lab/sessions/active"]
    (_, a_headers, _), (_, b_headers, _) = gets.asked
    assert a_headers[HOP_HEADER] == b_headers[HOP_HEADER] == b"1"
    assert b"Authorization" not in a_headers and b_headers[b"Authorization"] == b"Bearer secret-token-of-b-0123"
    gets.answer(1)
    assert not d.called  # waits for every lab
    gets.answer(0, body=orjson.dumps({"ok": True, "sessions": [{"id": "s2"}]}))
    body = result_of(d)
    assert [(entry["id"], entry.get("remote-source")) for entry in body["sessions"]] == [
        ("local", None), ("s2", "a"), ("s1", "b")]
    assert body["sessions"][2] | {} == {"id": "s1", "session-id": "s1", "remote-source": "b",
                                        "remote-url": "https://b.example",
                                        "viewer-url": "https://b.example/fulab/lab/?session=s1"}
    assert (body["remote-sources"], body["remote-errors"]) == (["a", "b"], [])


def test_a_lab_that_answers_at_once_is_served():
    answered = labs(LAB_A, gets=lambda url, headers: defer.succeed((200, GOOD)))
    assert [entry["id"] for entry in result_of(answered.listing()).entries] == ["s1"]
    failing = labs(LAB_A, gets=lambda url, headers: 1 / 0)
    assert [error["error"] for error in result_of(failing.listing()).errors] == ["unreachable"]


def test_a_request_from_another_lab_gets_local_sessions_only():
    gets = Gets()
    body = {"ok": True, "sessions": [{"id": "local"}]}
    assert result_of(labs(LAB_A, gets=gets).merge(request((HOP_HEADER, b"1")), body)) is body
    assert gets.asked == []


def test_answers_are_reused_for_a_few_seconds_and_pollers_share_one_request():
    clock, gets = task.Clock(), Gets()
    one = labs(LAB_A, clock=clock, gets=gets)
    first, second = one.listing(), one.listing()
    assert len(gets.asked) == 1
    gets.answer(0)
    assert result_of(first) == result_of(second)
    clock.advance(remote.CACHE_SECONDS - 0.1)
    assert result_of(one.listing()).entries[0]["id"] == "s1" and len(gets.asked) == 1
    clock.advance(0.1)
    one.listing()
    assert len(gets.asked) == 2


def test_a_slow_lab_costs_its_timeout_and_is_reported():
    clock, gets = task.Clock(), Gets()
    both = labs(LAB_A, LAB_B, clock=clock, gets=gets, timeout=3.0)
    d = both.listing()
    gets.answer(1)
    clock.advance(2.9)
    assert not d.called
    clock.advance(0.1)
    answer = result_of(d)
    assert gets.cancelled == ["http://a.example:5056/fulab/lab/sessions/active"]  # the request is aborted
    assert [entry["remote-source"] for entry in answer.entries] == ["b"]
    assert [(error["source"], error["error"]) for error in answer.errors] == [("a", "timeout")]
    assert "3 s" in answer.errors[0]["detail"]


@pytest.mark.parametrize("status, body, error", [
    (401, b"", "unauthorized"),
    (403, b"{}", "unauthorized"),
    (500, b"oops", "http-status"),
    (200, b"<html>", "bad-answer"),
    (200, b'{"ok": false, "sessions": []}', "bad-answer"),
    (200, b'{"ok": true, "sessions": {}}', "bad-answer"),
    (200, b"[1]", "bad-answer"),
])
def test_refusals_and_bad_answers_are_reported(status, body, error):
    gets = Gets()
    d = labs(LAB_A, LAB_B, gets=gets).listing()
    gets.answer(0, status, body)
    gets.answer(1, 401)
    answer = result_of(d)
    assert answer.entries == []
    assert [(e["source"], e["error"]) for e in answer.errors] == [("a", error), ("b", "unauthorized")]
    if error == "unauthorized":
        assert "give one with --remote-token-file a=FILE" in answer.errors[0]["detail"]  # a has no token
    assert "its token was refused" in answer.errors[1]["detail"]  # b has one


def test_entries_that_are_not_maps_with_string_ids_are_dropped():
    gets = Gets()
    d = labs(LAB_A, gets=gets).listing()
    gets.answer(0, body=orjson.dumps({"ok": True, "sessions": [
        {"id": "kept"}, {"id": 7}, "s", None, [], {"session-id": "no id"}, {"id": "a/b?c"}]}))
    answer = result_of(d)
    assert [entry["id"] for entry in answer.entries] == ["kept", "a/b?c"]
    assert answer.entries[1]["viewer-url"] == "http://a.example:5056/fulab/lab/?session=a%2Fb%3Fc"
    assert [(e["error"], e["detail"].split()[0]) for e in answer.errors] == [("bad-entries", "5")]


def test_well_known_fields_of_the_wrong_type_are_left_out():
    gets = Gets()
    d = labs(LAB_A, gets=gets).listing()
    gets.answer(0, body=orjson.dumps({"ok": True, "sessions": [
        {"id": "x", "project": 5, "modified": "2026-01-01T00:00:00Z", "size-kb": True, "events": 3, "active": 1,
         "uploading": True, "extra": {"kept": 1}, "viewer-url": "javascript:alert(1)"}]}))
    (entry,) = result_of(d).entries
    assert entry == {"id": "x", "modified": "2026-01-01T00:00:00Z", "events": 3, "uploading": True,
                     "extra": {"kept": 1}, "remote-source": "a", "remote-url": LAB_A.url,
                     "viewer-url": "http://a.example:5056/fulab/lab/?session=x"}


def test_sources_from_options_or_the_old_environment_variable(tmp_path):
    token = tmp_path / "b.token"
    token.write_text("# the token of lab b\n\nsecret-token-of-b-0123  lab-a\n")
    assert remote.configured_labs([], [], "a=http://a.example:5056/, b=https://b.example,,") == [
        RemoteLab("a", "http://a.example:5056"), RemoteLab("b", "https://b.example")]
    assert remote.configured_labs(["b=https://b.example"], [f"b={token}"], "a=http://a.example") == [LAB_B]
    assert remote.configured_labs([], [], None) == []
    for sources, tokens, environment, says in [
            (["a"], [], None, "is not NAME=URL"),
            (["a=ftp://x"], [], None, "http:// or https://"),
            (["a=http://x?q=1"], [], None, "no query"),
            ([], [], "a=http://x,b", "LAB_REMOTE_SOURCES 'b' is not NAME=URL"),
            (["a=http://x", "a=http://y"], [], None, "must differ"),
            (["a=http://x"], [f"c={token}"], None, "NAME a remote source (a)"),
            (["a=http://x"], [f"a={tmp_path / 'missing'}"], None, "cannot read the remote token file"),
            (["a=http://x"], [f"a={tmp_path}"], None, "cannot read the remote token file")]:
        with pytest.raises(remote.BadRemote, match=says.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
            remote.configured_labs(sources, tokens, environment)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(remote.BadRemote, match="holds no token"):
        remote.configured_labs(["a=http://x"], [f"a={tmp_path / 'empty'}"], None)


# -- the HTTP client against real servers on loopback ------------------------------

class Answers(resource.Resource):
    """A fake lab: `/fulab/lab/sessions/active` answers as `behaviour` says."""

    isLeaf = True

    def __init__(self, behaviour):
        super().__init__()
        self.behaviour = behaviour
        self.requests = []
        self.finished = []  # per request: fires when it is answered or its connection is lost

    def render_GET(self, request):
        self.requests.append(request)
        self.finished.append(request.notifyFinish().addErrback(lambda failure: failure.value))
        return self.behaviour(request)


@pytest.fixture
def fake_lab():
    ports = []

    def start(behaviour):
        answers = Answers(behaviour)
        port = reactor.listenTCP(0, server.Site(answers), interface="127.0.0.1")
        ports.append(port)
        return answers, RemoteLab("fake", f"http://127.0.0.1:{port.getHost().port}")

    yield start
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest_twisted.inlineCallbacks
def test_the_client_reads_a_real_answer_with_the_marker(fake_lab):
    answers, lab = fake_lab(lambda request: GOOD)
    answer = yield RemoteLabs([lab], HttpFetcher(reactor).get, reactor).listing()
    assert [entry["remote-source"] for entry in answer.entries] == ["fake"] and answer.errors == []
    assert answers.requests[0].getHeader(HOP_HEADER) == b"1"


@pytest.mark.parametrize("declared", [True, False])
@pytest_twisted.inlineCallbacks
def test_the_client_stops_reading_an_oversized_answer(fake_lab, declared):
    def huge(request):
        if declared:
            return b" " * 2048
        request.write(b" " * 1024)  # chunked: no length announced
        request.write(b" " * 1024)
        request.finish()
        return server.NOT_DONE_YET

    _, lab = fake_lab(huge)
    with pytest.raises(TooLarge):
        yield HttpFetcher(reactor, max_bytes=1500).get(lab.url + "/fulab/lab/sessions/active", {})
    answer = yield RemoteLabs([lab], HttpFetcher(reactor, max_bytes=1500).get, reactor).listing()
    assert [error["error"] for error in answer.errors] == ["too-large"]


@pytest_twisted.inlineCallbacks
def test_a_lab_that_never_answers_is_cut_at_the_timeout(fake_lab):
    answers, lab = fake_lab(lambda request: server.NOT_DONE_YET)
    answer = yield RemoteLabs([lab], HttpFetcher(reactor).get, reactor, timeout=0.2).listing()
    assert [error["error"] for error in answer.errors] == ["timeout"]
    lost = yield answers.finished[0]  # the connection is closed, not left open on the remote
    assert isinstance(lost, ConnectionLost)  # aborted


@pytest_twisted.inlineCallbacks
def test_a_lab_not_listening_is_unreachable(fake_lab):
    _, lab = fake_lab(lambda request: GOOD)
    closed = RemoteLab("closed", f"http://127.0.0.1:{free_port()}")
    answer = yield RemoteLabs([closed, lab], HttpFetcher(reactor).get, reactor).listing()
    assert [(error["source"], error["error"]) for error in answer.errors] == [("closed", "unreachable")]
    assert [entry["remote-source"] for entry in answer.entries] == ["fake"]


def test_the_daemon_options_take_the_environment_only_without_remote_sources(monkeypatch):
    monkeypatch.setenv("LAB_REMOTE_SOURCES", "old=http://old.example:5050")
    environment = Options()
    environment.parseOptions([])
    assert (environment["remote-labs"], environment["remote-timeout"], environment["remote-cache"]) == (
        [RemoteLab("old", "http://old.example:5050")], 3.0, 5.0)
    given = Options()
    given.parseOptions(["--remote-source", "a=http://a.example:5056", "--remote-timeout", "0.5"])
    assert (given["remote-labs"], given["remote-timeout"]) == ([LAB_A], 0.5)
    for bad in (["--remote-source", "nonsense"], ["--remote-timeout", "0"], ["--remote-cache", "-1"]):
        with pytest.raises(UsageError):
            Options().parseOptions(bad)
