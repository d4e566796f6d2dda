"""
The daemon's memory budget for upload messages (fulabd.budget), in memory:
which connections are held, when they carry on, and that every message gets
through in the end.
"""

from fulabd.budget import InflightBudget

MB = 1 << 20


class Connection:
    """A reader that records whether the budget holds it."""

    def __init__(self, name: str):
        self.name = name
        self.held = False

    def hold(self):
        assert not self.held
        self.held = True

    def carry_on(self):
        assert self.held
        self.held = False

    def __repr__(self):
        return self.name


def connections(count: int) -> list[Connection]:
    return [Connection(f"c{i}") for i in range(count)]


def test_frames_that_fit_are_read_and_the_first_that_does_not_is_held():
    budget = InflightBudget(256 * MB)
    readers = connections(5)
    assert [budget.frame(reader, 60 * MB) for reader in readers] == [True] * 4 + [False]
    assert [reader.held for reader in readers] == [False] * 4 + [True]
    assert budget.reserved == 240 * MB and budget.held == 1


def test_a_held_connection_carries_on_once_an_earlier_message_is_acknowledged():
    budget = InflightBudget(256 * MB)
    first, *others, last = connections(5)
    for reader in (first, *others, last):
        budget.frame(reader, 60 * MB)
    size = budget.message_received(first)
    assert size == 60 * MB and last.held, "a received message holds its bytes until its ack"
    budget.release(size)
    assert not last.held and budget.reserved == 240 * MB


def test_held_connections_carry_on_in_the_order_their_messages_began():
    budget = InflightBudget(100 * MB)
    a, b, c, d = connections(4)
    budget.frame(a, 100 * MB)
    budget.frame(b, 60 * MB)
    budget.frame(c, 10 * MB)
    assert b.held and c.held, "a small later message does not overtake a held earlier one"
    budget.release(budget.message_received(a))
    assert not b.held and not c.held
    budget.frame(d, 40 * MB)
    assert d.held


def test_messages_that_grow_once_decoded_ask_for_what_they_may_grow_to():
    """24 packed frames of 600 bytes that inflate to 15 MB each: asking for 600 bytes, all were let in at once."""
    budget = InflightBudget(16 * MB)
    readers = connections(24)
    granted = [budget.frame(reader, 600, grows_to=16 * MB) for reader in readers]
    assert granted == [True] + [False] * 23
    size = budget.decoded(budget.message_received(readers[0]), 15 * MB)
    assert size == 15 * MB and budget.reserved == 15 * MB
    assert all(reader.held for reader in readers[1:]), "a second one would go past the limit"
    budget.release(size)
    assert [reader.held for reader in readers[:3]] == [False, False, True]
    assert budget.reserved == 16 * MB
    small = budget.decoded(budget.message_received(readers[1]), 1000)
    assert budget.reserved == 1000 and small == 1000, "what it did not grow to is free at once"
    assert readers[2].held, "16 MB more would still go past the limit while that one waits for its commit"
    budget.release(small)
    assert not readers[2].held and budget.reserved == 16 * MB


def test_a_message_larger_than_the_budget_passes_alone():
    budget = InflightBudget(10 * MB)
    small, big = connections(2)
    assert budget.frame(small, 5 * MB)
    assert not budget.frame(big, 50 * MB)
    budget.release(budget.message_received(small))
    assert not big.held and budget.reserved == 50 * MB
    budget.release(budget.message_received(big))
    assert budget.reserved == 0 and budget.committing == 0


def test_fragmented_messages_that_fill_the_budget_between_them_do_not_deadlock():
    budget = InflightBudget(10 * MB)
    a, b = connections(2)
    assert budget.frame(a, 5 * MB) and budget.frame(b, 5 * MB)
    assert budget.frame(a, 5 * MB), "the budget is full, but the oldest message goes on (no commit would free it)"
    assert not budget.frame(b, 5 * MB) and b.held
    budget.release(budget.message_received(a))
    assert not b.held


def test_the_oldest_message_waits_for_pending_commits_before_going_over():
    budget = InflightBudget(10 * MB)
    done, a, b = connections(3)
    budget.frame(done, 4 * MB)
    committed = budget.message_received(done)
    budget.frame(a, 3 * MB)
    budget.frame(b, 3 * MB)
    assert not budget.frame(a, 5 * MB) and a.held, "over the limit while a commit is pending: wait for it"
    budget.release(committed)
    assert not a.held and b.held is False


def test_a_closed_connection_gives_back_what_it_was_receiving():
    budget = InflightBudget(10 * MB)
    gone, waiting = connections(2)
    budget.frame(gone, 8 * MB)
    budget.frame(waiting, 8 * MB)
    budget.forget(gone)
    assert not waiting.held and budget.reserved == 8 * MB
    budget.forget(waiting)
    assert budget.reserved == 0 and budget.held == 0


def test_sixteen_connections_each_with_a_sixty_mb_message_all_get_through_under_the_limit():
    budget = InflightBudget(256 * MB)
    readers = connections(16)
    for reader in readers:
        budget.frame(reader, 60 * MB)
    peak, acked = budget.reserved, []
    while len(acked) < len(readers):
        reader = next(each for each in readers if each not in acked and not each.held)
        budget.release(budget.message_received(reader))
        acked.append(reader)
        peak = max(peak, budget.reserved)
    assert acked == readers, "in the order their messages began"
    assert peak <= 256 * MB and budget.reserved == 0 and budget.holds == 12


# -- the hook in the upload protocol, over in-memory transports with the real store --

def upload_connections(tmp_path, count: int, limit: int, protocol=None, clock=None):
    """`count` upload connections, opened over string transports, on a store in `tmp_path` (their factory's
    `protocol` if given: another reading of frames, say), on `clock` (a new one if not given)."""
    from twisted.internet import defer
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from fulabd.access import Gate
    from fulabd.store import SessionStore
    from fulabd.upload import UploadFactory
    from tests.fixtures import handshake_request

    clock = clock or Clock()
    store = SessionStore(str(tmp_path / "remote"), clock=clock,
                         run_in_thread=lambda function, *args: defer.maybeDeferred(function, *args))
    store.startService()
    factory = UploadFactory(store, clock=clock, max_message_size=64 * MB, admit=Gate().admit,
                            budget=InflightBudget(limit), reactor=clock)
    factory.protocol = protocol or factory.protocol
    opened = []
    for i in range(count):
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + i))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + i))
        protocol.makeConnection(transport)
        protocol.dataReceived(handshake_request(5056))
        assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
        transport.clear()
        opened.append((protocol, transport))
    return clock, store, factory, opened


def init_frame(session_id: str, line_bytes: int) -> bytes:
    import orjson

    from tests.fixtures import frame

    line = orjson.dumps({"type": "user", "text": "x" * line_bytes}).decode()
    return frame(0x1, orjson.dumps({"type": "init", "session-id": session_id, "events": [line]}))


def replies(transport) -> list[dict]:
    import orjson

    from tests.fixtures import parse_frames

    return [orjson.loads(payload) for opcode, payload in parse_frames(transport.value()) if opcode == 0x1]


def test_a_connection_over_the_budget_stops_reading_until_an_earlier_message_is_acked(tmp_path):
    clock, store, factory, [(first, first_wire), (second, second_wire)] = upload_connections(tmp_path, 2, MB)
    big = init_frame("first", 900_000)
    head, rest = big[:16], big[16:]
    first.dataReceived(head)
    second.dataReceived(init_frame("second", 300_000))
    assert second_wire.producerState == "paused" and not replies(second_wire)
    assert factory.budget.held == 1
    first.dataReceived(rest)
    for _ in range(10):
        clock.advance(0.1)
    assert replies(first_wire)[0]["count"] == 1
    assert second_wire.producerState == "producing"
    assert replies(second_wire)[0]["count"] == 1, "the buffered message is read once the connection carries on"
    assert factory.budget.reserved == 0
    store.stopService()


def test_a_packed_message_counts_its_decompressed_lines_until_its_ack(tmp_path):
    """A packed frame is a tenth of its lines on the wire: the budget holds what they take once inflated."""
    from fulabd.uploader.connection import UploadClientFactory
    from fulabd.uploader.uploads import Uploads
    from tests.memory import Commits, Lab
    from tests.test_uploader_units import Events, write_lines

    lab = Lab(tmp_path / "remote", commits=Commits(at_once=False))
    try:
        path = tmp_path / "s.jsonl"
        write_lines(path, 2000)
        uploads = Uploads(lab.clock, Events(), source="codex", max_frame_bytes=1 << 20)
        uploads.track(path)
        client = lab.connect(UploadClientFactory("ws://127.0.0.1:5056/fulab/lab/upload/ws", uploads,
                                                 reactor=lab.clock))
        lab.flush()
        assert client.packer is not None, "the lines travel packed"
        budget = lab.uploads.budget
        assert budget.committing >= path.stat().st_size, "the decompressed lines, not the compressed frame"
        lab.commits.run()
        lab.flush()
        assert budget.reserved == 0 and budget.committing == 0
    finally:
        lab.close()
