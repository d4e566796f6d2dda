"""
The upload endpoint in memory (tests/memory.py): the real site, protocol and
store on real files, driven message by message, with the store's commits
run when the test says.
"""

import edn_format
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs, formatEvent

from fulabd import closing
from tests.fixtures import sample_files, sample_lines
from tests.memory import Commits, Lab
from tests.test_bad_input import check_reply, payloads

UPLOAD_PATHS = ["/fulab/lab/upload/ws", "/upload/ws", "/some/prefix/lab/upload/ws"]
K = edn_format.Keyword


def upload(lab, message: dict, path: str = "/fulab/lab/upload/ws") -> dict:
    """One message on a connection of its own."""
    client = lab.client(path)
    reply = client.call(message)
    client.sendClose(1000)
    lab.flush()
    return reply


@pytest.fixture
def pending(tmp_path):
    """A site whose store's commits run only when the test says: acks wait for them."""
    site = Lab(tmp_path / "remote", commits=Commits(at_once=False))
    yield site
    site.close()


@pytest.mark.parametrize("path", UPLOAD_PATHS)
def test_every_sample_is_stored_byte_identical_on_every_upload_path(lab, path):
    for number, sample in enumerate(sample_files()):
        session_id = f"{number}-{sample.stem}"
        lines = sample_lines(sample)
        reply = upload(lab, {"type": "init", "session-id": session_id, "source": "codex", "events": lines}, path)
        assert reply == {"type": "ack", "session-id": session_id, "count": len(lines), "appended": len(lines),
                         "dedup": False}
        assert (lab.root / f"{session_id}.jsonl").read_bytes() == sample.read_bytes(), sample


def test_repeated_init_adds_nothing_and_extended_init_adds_only_the_tail(lab):
    sample = next(p for p in sample_files() if p.name.startswith("fe5e1c67"))
    lines = sample_lines(sample)
    client = lab.client()
    first = client.call({"type": "init", "session-id": "s", "events": lines[:100]})
    again = client.call({"type": "init", "session-id": "s", "events": lines[:100]})
    longer = client.call({"type": "init", "session-id": "s", "events": lines})
    shorter = client.call({"type": "init", "session-id": "s", "events": lines[:10]})
    assert (first["count"], first["appended"], first["dedup"]) == (100, 100, False)
    assert (again["count"], again["appended"], again["dedup"]) == (100, 0, True)
    assert (longer["count"], longer["appended"], longer["dedup"]) == (len(lines), len(lines) - 100, False)
    assert (shorter["count"], shorter["appended"], shorter["dedup"]) == (len(lines), 0, True)
    assert (lab.root / "s.jsonl").read_bytes() == sample.read_bytes()


def test_init_that_disagrees_is_a_conflict_and_changes_nothing(lab):
    upload(lab, {"type": "init", "session-id": "s", "events": ['{"a":1}', '{"a":2}', '{"a":3}']})
    reply = upload(lab, {"type": "init", "session-id": "s", "events": ['{"a":1}', '{"a":9}', '{"a":3}', "x"]})
    assert (reply["type"], reply["err"], reply["line"], reply["count"]) == ("error", "conflict", 1, 3)
    assert (lab.root / "s.jsonl").read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'


def test_seq_batches_resume_and_gap(lab):
    client = lab.client()
    assert client.call({"type": "resume", "session-id": "n"}) == {
        "type": "ack", "session-id": "n", "count": 0, "appended": 0, "dedup": False, "resume": True}
    assert client.call({"type": "events", "session-id": "n", "seq": 0, "events": ["a", "b"]})["count"] == 2
    gap = client.call({"type": "events", "session-id": "n", "seq": 5, "events": ["f"]})
    assert (gap["err"], gap["expected"]) == ("gap", 2)
    overlap = client.call({"type": "events", "session-id": "n", "seq": 1, "events": ["b", "c"]})
    assert (overlap["count"], overlap["appended"], overlap["dedup"]) == (3, 1, False)
    assert client.call({"type": "event", "session-id": "n", "seq": 3, "event": {"k": [1, 2]}})["count"] == 4
    assert client.call({"type": "event", "session-id": "n", "event": "at the end"})["count"] == 5
    assert client.call({"type": "resume", "session-id": "n"})["count"] == 5
    assert (lab.root / "n.jsonl").read_bytes() == b'a\nb\nc\n{"k":[1,2]}\nat the end\n'


def test_event_after_init_may_omit_the_session_id(lab):
    client = lab.client("/upload/ws")
    client.call({"type": "init", "session/id": "old", "events": [{"x": 1}]})
    assert client.call({"type": "event", "event": "raw line"})["count"] == 2
    assert (lab.root / "old.jsonl").read_bytes() == b'{"x":1}\nraw line\n'


def test_an_error_names_the_session_of_the_message_it_answers(lab):
    """One connection, two sessions: an error about the second must not be taken for the first's."""
    client = lab.client()
    assert client.call({"type": "init", "session-id": "a1", "events": ["a0"]})["count"] == 1
    gap = client.call({"type": "events", "session-id": "b1", "seq": 5, "events": ["x"]})
    assert (gap["err"], gap["session-id"], gap["expected"]) == ("gap", "b1", 0)
    bad = client.call({"type": "events", "session-id": "b1", "seq": 0, "events": ["two\nlines"]})
    assert (bad["err"], bad["session-id"]) == ("bad-event", "b1")
    unnamed = client.call({"type": "event", "seq": 9, "event": "x"})
    assert (unnamed["err"], unnamed["session-id"]) == ("gap", "a1")  # a message naming none is the connection's
    assert "session-id" not in client.call("not json")
    assert "session-id" not in client.call({"type": "events", "session-id": True, "seq": 0, "events": []})
    assert (lab.root / "a1.jsonl").read_bytes() == b"a0\n" and not (lab.root / "b1.jsonl").exists()


@pytest.mark.parametrize("message, code", [
    ("not json", "bad-json"),
    ("[1, 2]", "bad-json"),
    ('{"type": "event", "event": "x"}', "missing-session-id"),
    ('{"type": "init", "session-id": "", "events": []}', "missing-session-id"),
    ('{"type": "init", "session-id": true, "events": []}', "missing-session-id"),
    ('{"type": "resume"}', "missing-session-id"),
    ('{"type": "init", "session-id": "a\\u0000", "events": []}', "missing-session-id"),  # control characters, which cut log lines
    ('{"type": "init", "session-id": "a\\nforged log line", "events": []}', "missing-session-id"),
    ('{"type": "init", "session-id": "a\\r\\u2028", "events": []}', "missing-session-id"),
    ('{"type": "nonsense", "session-id": "a"}', "unknown-type"),
    ('{"session-id": "a"}', "unknown-type"),
    ('{"type": "init", "session-id": "a", "events": ["two\\nlines"]}', "bad-event"),
    ('{"type": "init", "session-id": "a", "events": {"not": "a list"}}', "bad-event"),
    ('{"type": "events", "session-id": "a", "events": ["x"]}', "bad-event"),
    ('{"type": "events", "session-id": "a", "seq": -1, "events": ["x"]}', "bad-event"),
    ('{"type": "event", "session-id": "a"}', "bad-event"),
    ('{"type": "par", "session-id": "a", "par": "text"}', "bad-par"),
    ('{"type": "init", "session-id": "a", "events": [' + "[" * 300 + "]" * 300 + ']}', "bad-event"),  # too deep
    ('{"type": "init", "session-id": "a", "events": [], "cwd": ' + "[" * 40 + "]" * 40 + '}', "bad-event"),
    ('{"type": "init", "session-id": "a", "events": [], "project": "' + "p" * 70_000 + '"}', "bad-event"),
])
def test_every_bad_message_gets_its_error_and_the_connection_stays_open(lab, message, code):
    client = lab.client()
    reply = client.call(message)
    assert reply["type"] == "error" and reply["err"] == code, reply
    assert reply["detail"]
    assert client.call({"type": "ping"})["type"] == "pong"
    assert client.close_code is None
    assert not (lab.root / "a.jsonl").exists()


def test_a_binary_frame_is_refused_as_bad_json(lab):
    client = lab.client()
    client.sendMessage(b'{"type":"ping"}', isBinary=True)
    lab.flush()
    [reply] = client.take()
    assert reply["err"] == "bad-json" and "text frames" in reply["detail"]
    assert client.call({"type": "ping"})["type"] == "pong"


def test_oversize_message_gets_too_large_then_close_1009(tmp_path):
    lab = Lab(tmp_path / "remote", max_message_size=1000)
    try:
        client = lab.client()
        client.send({"type": "init", "session-id": "big", "events": ["x" * 2000]})
        lab.flush()
        [reply] = client.take()
        assert reply["err"] == "too-large" and reply["limit"] == 1000
        assert client.close_code == 1009
        assert not (lab.root / "big.jsonl").exists()
        assert upload(lab, {"type": "ping"}, "/upload/ws")["type"] == "pong"
    finally:
        lab.close()


def test_unknown_websocket_path_is_refused_with_a_clear_error(lab):
    client = lab.client("/fulab/lab/nothing/here")
    [reply] = client.take()
    assert reply["err"] == "invalid-path" and "/fulab/lab/upload/ws" in reply["detail"]
    assert client.close_code == 1008


@pytest.mark.parametrize("session_id", ["../../etc/passwd", "a/b", "a_b", "", ".hidden", "x" * 10_000, "日本語"])
def test_hostile_and_odd_ids_stay_inside_the_root_and_apart(lab, session_id):
    reply = upload(lab, {"type": "init", "session-id": session_id, "events": [session_id[:50] or "empty"]})
    if session_id == "" or len(session_id) > 1024:
        assert reply["err"] == "missing-session-id"
        assert list(lab.root.iterdir()) == []
        return
    assert reply["count"] == 1
    lab.close()  # the metadata is written
    files = sorted(p.name for p in lab.root.iterdir())
    assert all(not name.startswith(".") and len(name) < 200 for name in files), files
    assert all(p.resolve().parent == lab.root.resolve() for p in lab.root.iterdir())
    meta = edn_format.loads((lab.root / next(f for f in files if f.endswith(".meta.edn"))).read_text())
    assert meta[K("session-id")] == session_id


def test_ids_that_sanitize_alike_keep_separate_files(lab):
    for session_id in ("a/b", "a_b", "a b", "a__b"):
        upload(lab, {"type": "init", "session-id": session_id, "events": [session_id]})
    jsonl = sorted(lab.root.glob("*.jsonl"))
    assert len(jsonl) == 4
    assert sorted(p.read_text() for p in jsonl) == sorted(f"{i}\n" for i in ("a/b", "a_b", "a b", "a__b"))


def test_two_connections_on_one_session_interleave_without_loss_or_duplicate(pending):
    # Each connection sends the whole session in its own batch size, so the two overlap all the time,
    # and several messages of each wait for the same group commit.
    one, two = pending.client("/upload/ws"), pending.client("/upload/ws")
    for i in range(0, 200, 2):
        one.send({"type": "events", "session-id": "shared", "seq": i, "events": [f"{i}"]})
        one.send({"type": "events", "session-id": "shared", "seq": i + 1, "events": [f"{i + 1}"]})
        two.send({"type": "events", "session-id": "shared", "seq": i, "events": [f"{i}", f"{i + 1}"]})
        if i % 10 == 0:
            pending.flush()
            pending.commits.run()
    pending.flush()
    pending.commits.run()
    pending.flush()
    replies = one.take() + two.take()
    assert len(replies) == 300
    assert all(reply["type"] == "ack" for reply in replies), [r for r in replies if r["type"] != "ack"][:3]
    assert replies[199]["count"] == 200 and sum(reply["appended"] for reply in replies) == 200
    assert (pending.root / "shared.jsonl").read_text() == "".join(f"{i}\n" for i in range(200))


def test_an_ack_waits_for_the_commit_and_replies_keep_message_order(pending):
    client = pending.client()
    client.send({"type": "init", "session-id": "o", "events": ["a"]})
    client.send({"type": "ping"})
    client.send({"type": "events", "session-id": "o", "seq": 5, "events": ["f"]})
    pending.flush()
    assert client.take() == []  # the pong and the gap wait behind the ack of a line not yet durable
    assert pending.commits.run() == 1
    pending.flush()
    assert [reply["type"] for reply in client.take()] == ["ack", "pong", "error"]


def test_a_new_session_is_its_creators_before_its_first_commit(tmp_path):
    """Another upload token's message for a session whose first lines are written but not yet durable is
    `forbidden`: the owner used to be named only with the first ack, and the other token's line went in."""
    from fulabd.access import Gate
    from fulabd.tokens import Principal, Tokens

    gate = Gate(Tokens({"a" * 32: Principal("alice", frozenset({"upload"})),
                        "b" * 32: Principal("bob", frozenset({"upload"}))}))
    lab = Lab(tmp_path / "remote", commits=Commits(at_once=False), gate=gate)
    try:
        alice, bob = (lab.client(headers={"Authorization": f"Bearer {secret * 32}"}) for secret in "ab")
        alice.send({"type": "init", "session-id": "new", "events": ["a"]})
        lab.flush()
        for message in ({"type": "events", "session-id": "new", "seq": 1, "events": ["squat"]},
                        {"type": "init", "session-id": "new", "events": ["a"], "project": "/elsewhere"}):
            bob.send(message)
            lab.flush()
            lab.commits.run()
            lab.flush()
            [reply] = bob.take()
            assert reply["err"] == "forbidden", reply
        alice.send({"type": "events", "session-id": "new", "seq": 1, "events": ["b"]})
        lab.flush()
        lab.commits.run()
        lab.flush()
        assert [reply["type"] for reply in alice.take()] == ["ack", "ack"]
        assert (tmp_path / "remote" / "new.jsonl").read_bytes() == b"a\nb\n"
        assert lab.store.get("new").meta["uploader"] == "alice" and "project" not in lab.store.get("new").meta
    finally:
        lab.close()


def test_a_resume_is_answered_with_the_count_when_the_reply_is_sent(pending):
    """docs/protocol.md: a pipelined client can see a count larger than when it asked."""
    client = pending.client()
    client.send({"type": "events", "session-id": "r", "seq": 0, "events": ["a"]})
    pending.flush()  # line a's sync is in flight
    client.send({"type": "events", "session-id": "r", "seq": 1, "events": ["b"]})
    client.send({"type": "resume", "session-id": "r"})
    client.send({"type": "events", "session-id": "r", "seq": 2, "events": ["c"]})
    pending.flush()  # b, the resume and c wait for the session's next sync
    pending.commits.run()
    pending.flush()
    first, second, resume, last = client.take()
    assert (first["count"], second["count"], resume["count"], last["count"]) == (1, 3, 3, 3)


def test_par_round_trip_through_the_sidecar(lab):
    par = {"id": "par-1", "title": "What we learned", "tags": ["stack-hud", "par"],
           "questions": {"intention": "i", "happening": "h", "perspectives": "p", "learned": "l", "forward": "f"},
           "extra": 7}
    upload(lab, {"type": "init", "session-id": "p", "events": ["{}"]})  # a PAR is about a session with lines
    first = upload(lab, {"type": "par", "session-id": "p", "par": par})
    again = upload(lab, {"type": "par", "session-id": "p", "par": par})
    generated = upload(lab, {"type": "par", "session-id": "p", "par": {"title": "no id"}})
    assert (first["par-id"], first["pars"], first["dedup"], again["dedup"]) == ("par-1", 1, False, True)
    assert generated["par-id"].startswith("par-") and generated["pars"] == 2
    stored = edn_format.loads((lab.root / "p.par.edn").read_text())
    assert len(stored) == 2
    assert list(stored[0][K("tags")]) == [K("stack-hud"), K("par")]
    assert stored[0][K("questions")][K("learned")] == "l"
    assert stored[0][K("extra")] == 7 and stored[0][K("title")] == "What we learned"
    assert (lab.root / "p.jsonl").read_bytes() == b"{}\n"


def test_meta_records_the_session_and_keeps_created_at(lab):
    upload(lab, {"type": "init", "session-id": "m", "project": "/p", "source": "claude", "originator": "laptop",
                 "cwd": "/p", "remote-source": "lab2", "events": ["1", "2"]})
    created = edn_format.loads((lab.root / "m.meta.edn").read_text())[K("created-at")]
    lab.clock.advance(5)
    upload(lab, {"type": "init", "session-id": "m", "source": "claude", "events": ["1", "2", "3"]})
    lab.close()
    meta = edn_format.loads((lab.root / "m.meta.edn").read_text())
    assert meta[K("created-at")] == created
    assert meta[K("session-id")] == "m" and meta[K("source")] == "claude" and meta[K("cwd")] == "/p"
    assert meta[K("remote-source")] == "lab2" and meta[K("originator")] == "laptop"
    assert meta[K("init/complete")] is True and meta[K("init/event-count")] == 3
    assert meta[K("event-count")] == 3 and meta[K("par-count")] == 0 and K("updated-at") in meta


def test_an_upload_without_a_token_logs_who_but_no_uploader(lab):
    with capturedLogs() as events:
        upload(lab, {"type": "init", "session-id": "quiet", "events": ["x"]})
    texts = [formatEvent(event) for event in events]
    assert "upload connection open from 127.0.0.1" in texts
    assert not any("uploader" in text for text in texts), texts



# Fewer examples than test_bad_input.py sends the real daemon: this one is in the fast tier.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payloads, min_size=1, max_size=8))
def test_random_messages_each_get_one_documented_reply_in_order(lab, batch):
    client = lab.client()
    for payload in batch:
        client.sendMessage(payload if isinstance(payload, bytes) else payload.encode("utf-8"),
                           isBinary=isinstance(payload, bytes))
    client.send({"type": "ping"})
    lab.flush()
    replies = client.take()
    assert len(replies) == len(batch) + 1 and replies[-1]["type"] == "pong", replies
    for reply, payload in zip(replies, batch):
        check_reply(reply, payload)
    client.sendClose(1000)
    lab.flush()


def test_a_refused_peer_that_reads_nothing_is_ended_gently_then_reset(lab):
    """Once the close handshake times out, the connection is ended with a FIN (so a slow reader still finds the
    close frame and its code), and reset only RESET_AFTER seconds later if even that cannot be delivered (so a
    peer that never reads cannot hold on to it)."""
    client = lab.client(headers={"Origin": "http://evil.example"}, reading=False)
    server = lab._server_transport(client)
    lab.clock.advance(1.0)  # Autobahn's close handshake timeout
    lab.flush()
    assert server.closing and not server.aborted  # the FIN waits behind the unread close frame
    lab.clock.advance(closing.RESET_AFTER)
    lab.flush()
    assert server.aborted and server.disconnected


def test_a_connection_counts_against_the_caps_until_its_socket_is_gone(tmp_path):
    """A peer that reads nothing keeps its socket until the FIN gets through, and the socket counts until then,
    not just until Autobahn lets go of it (else one address could hold sockets past its cap)."""
    lab = Lab(tmp_path / "remote", max_message_size=1000)
    try:
        client = lab.client()
        assert sum(lab.gate.limits.open.values()) == 1 and lab.gate.websockets_open == 1
        lab.stall(client)
        client.send({"type": "init", "session-id": "s", "events": ["x" * 5000]})  # too large: the server closes
        lab.flush()
        lab.clock.advance(1.0)  # the close handshake times out; the FIN waits behind the unread refusal
        lab.flush()
        assert lab._server_transport(client).closing
        assert sum(lab.gate.limits.open.values()) == 1 and lab.gate.websockets_open == 1
        lab.unstall(client)
        assert client.close_code == 1009
        assert not lab.gate.limits.open and lab.gate.websockets_open == 0
    finally:
        lab.close()


def test_a_client_that_reads_no_replies_is_not_read_either_until_it_does(lab):
    """Pings whose pongs are never read would otherwise pile up in the daemon's memory, one reply each."""
    client = lab.client()
    lab.stall(client)
    for _ in range(20_000):
        client.send({"type": "ping"})
    lab.flush()
    server = lab._server_transport(client)
    waiting = sum(map(len, server.stream))
    assert server.producer_paused and waiting < 2 * server.buffer_size, waiting
    lab.unstall(client)
    for _ in range(100):  # each turn reads what the last one freed
        lab.clock.advance(0)
        lab.flush()
    replies = client.take()
    assert len(replies) == 20_000 and {reply["type"] for reply in replies} == {"pong"}
