"""
The listings from the store's change index: pages by `limit`/`cursor`, only
the changes with `since`, the old shape without parameters, and no file
touched per request. Real store on real files, the resource rendered in memory.
"""

import os

import orjson
import pytest
from twisted.web.test.requesthelper import DummyRequest

from fulabd import web
from fulabd.listing import Listing
from tests.test_store import make_store, result_of


def listing_of(listing: Listing, **query) -> tuple[int, dict]:
    request = DummyRequest([b""])
    request.args = {key.encode(): [str(value).encode()] for key, value in query.items()}
    body = web.Sessions(listing, listing.store.clock, 3600).render_GET(request)
    return request.responseCode or 200, orjson.loads(body)


@pytest.fixture
def filled(tmp_path):
    store, clock = make_store(tmp_path)
    for number in range(25):
        result_of(store.append(f"s{number:02}", 0, [b"{}"]))
        clock.advance(1)
    return Listing(store)


def ids(reply) -> list[str]:
    return [entry["session-id"] for entry in reply["sessions"]]


def test_pages_walk_every_session_once_latest_change_first(filled):
    seen, cursor = [], None
    while True:
        query = {"limit": 10} | ({"cursor": cursor} if cursor is not None else {})
        code, reply = listing_of(filled, **query)
        assert code == 200 and len(reply["sessions"]) <= 10
        seen += ids(reply)
        cursor = reply["next"]
        if cursor is None:
            break
    assert seen == [f"s{number:02}" for number in reversed(range(25))]


def test_since_gives_only_what_changed_and_a_new_token(filled):
    _, first = listing_of(filled)
    assert len(first["sessions"]) == 25 and ids(first)[0] == "s24"
    _, nothing = listing_of(filled, since=first["token"])
    assert nothing["sessions"] == [] and nothing["token"] == first["token"]
    store = filled.store
    result_of(store.append("s03", 1, [b"{}"]))
    store.attach("s07")
    _, changed = listing_of(filled, since=first["token"])
    assert ids(changed) == ["s07", "s03"] and changed["sessions"][1]["events"] == 2
    assert changed["sessions"][0]["uploading"] is True
    _, after = listing_of(filled, since=changed["token"])
    assert after["sessions"] == []


def test_a_token_from_another_process_gets_the_whole_listing_again(filled):
    _, reply = listing_of(filled, since="0badc0de-3")
    assert reply["reset"] is True and len(reply["sessions"]) == 25


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"cursor": "-1"},
                                   {"since": "a-1", "limit": 5}, {"limit": "\uff12"}, {"cursor": "\u00b2"}])
def test_bad_listing_parameters_get_a_clear_400(filled, query):
    code, reply = listing_of(filled, **query)
    assert code == 400 and reply["err"] == "bad-request" and reply["detail"]


def test_a_listing_touches_no_file(filled, monkeypatch):
    def no_file_calls(*args, **kwargs):
        raise AssertionError("a listing request touched the file system")

    for name in ("stat", "open", "lstat", "scandir", "listdir"):
        monkeypatch.setattr(os, name, no_file_calls)
    monkeypatch.setattr(os.path, "realpath", no_file_calls)
    assert len(listing_of(filled)[1]["sessions"]) == 25
    assert len(listing_of(filled, limit=5)[1]["sessions"]) == 5


def test_a_session_begun_with_no_lines_is_listed_as_new_and_active(tmp_path):
    store, clock = make_store(tmp_path)
    result_of(store.append("empty", 0, [], {"project": "/x"}))
    _, reply = listing_of(Listing(store))
    [entry] = reply["sessions"]
    assert entry["session-id"] == "empty" and entry["active"] is True
    assert entry["modified"].startswith("2027-01-15"), entry  # the clock's now, not 1970
