"""
The index worker (it reads the session files it is told of into a real SQLite
index) and the daemon's feeder (it tells the worker what changed), each without
the other: the worker stepped by hand, the feeder on a `Clock` with its worker's
pipes in memory.  `test_search.py` runs them together, as the daemon does.
"""

import orjson
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from fulabd.index import Filters, IndexUnusable
from fulabd.index import worker as worker_module
from fulabd.index.feeder import IndexFeeder, session_news
from fulabd.index.query import parse_query
from fulabd.index.sqlite import SqliteIndex
from fulabd.index.worker import Worker
from fulabd.local import index_file


def line(text: str) -> bytes:
    return orjson.dumps({"type": "user", "timestamp": "2026-01-02T03:04:05Z",
                         "message": {"role": "user", "content": text}})


@pytest.fixture
def index(tmp_path):
    opened = SqliteIndex(str(tmp_path / ".index"))
    yield opened
    opened.close()


def session_file(tmp_path, name: str, texts: list[str]):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(line(text) + b"\n" for text in texts))
    return index_file(str(path), "claude")


def lines_with(index, word: str) -> list[int]:
    return sorted(hit["line"] for hit in index.search(parse_query(word), Filters(), 100, None).items)


class Said(list):
    def __call__(self, message):
        self.append(message)


def test_the_worker_reads_what_it_is_told_from_the_file_once(tmp_path, index):
    said = Said()
    worker = Worker(index, said, clock=lambda: 0.0)
    session = session_file(tmp_path, "s", [f"alpha word{i}" for i in range(50)])
    worker.told(session_news(session))
    worker.told({"op": "sync", "n": 1})
    assert said == [{"heard": 1}]  # read at once: the daemon may send more
    worker.step()
    assert lines_with(index, "alpha") == list(range(50)) and said[-1] == {"idle": 1}

    with open(session.path, "ab") as f:
        f.write(line("late beta") + b"\n" + line("not durable yet gamma") + b"\n")
    grown = session_news(session) | {"lines": 51, "bytes": session.size + len(line("late beta")) + 1}
    worker.told(grown)
    worker.told(grown)  # news repeated is not indexed twice
    worker.step()
    assert (lines_with(index, "beta"), lines_with(index, "gamma"), len(lines_with(index, "alpha"))) == ([50], [], 50)


def test_a_rewritten_local_file_is_indexed_afresh(tmp_path, index):
    worker = Worker(index, Said(), clock=lambda: 0.0)
    worker.told(session_news(session_file(tmp_path, "s", ["first version", "more"])))
    worker.step()
    worker.told(session_news(session_file(tmp_path, "s", ["second edition", "more", "x"])))
    worker.step()
    assert (lines_with(index, "version"), lines_with(index, "edition"), lines_with(index, "more")) == ([], [0], [1])


def test_a_long_backfill_takes_turns_with_other_sessions(tmp_path, index, monkeypatch):
    monkeypatch.setattr(worker_module, "BATCH_BYTES", 2_000)
    monkeypatch.setattr(worker_module, "READ_BYTES", 2_000)
    worker = Worker(index, Said(), clock=lambda: 0.0)
    big = session_file(tmp_path, "big", [f"bulk{i} " + "x" * 100 for i in range(200)])
    worker.told(session_news(big))
    worker.step()
    done_before = index.progress(big.path).lines
    worker.told(session_news(session_file(tmp_path, "live", ["fresh news"])))
    worker.step()
    assert lines_with(index, "fresh") == [0] and 0 < done_before < 200
    for _ in range(100):
        worker.step()
    assert index.progress(big.path).lines == 200 and lines_with(index, "bulk199") == [199]


def test_a_sync_is_answered_once_what_came_before_it_is_done_even_while_news_keeps_coming(tmp_path, index,
                                                                                          monkeypatch):
    monkeypatch.setattr(worker_module, "BATCH_BYTES", 2_000)
    monkeypatch.setattr(worker_module, "READ_BYTES", 2_000)
    said = Said()
    worker = Worker(index, said, clock=lambda: 0.0)
    big = session_file(tmp_path, "big", [f"bulk{i} " + "x" * 100 for i in range(60)])
    worker.told(session_news(big))
    worker.told({"op": "sync", "n": 1})
    live = session_file(tmp_path, "live", ["first"])
    for step in range(20):
        worker.step()
        if {"idle": 1} in said:
            break
        with open(live.path, "ab") as f:  # a live session that never stops
            f.write(line(f"more{step}") + b"\n")
        worker.told(session_news(index_file(live.path, "claude")))
    assert {"idle": 1} in said and index.progress(big.path).lines == 60


def test_a_session_with_an_unreadable_sidecar_does_not_hold_up_the_others(tmp_path, index):
    said = Said()
    worker = Worker(index, said, clock=lambda: 0.0)
    torn, fine = session_file(tmp_path, "torn", ["torn words"]), session_file(tmp_path, "fine", ["fine words"])
    (tmp_path / "torn.par.edn").write_bytes(b'[{:title "half')
    worker.told(session_news(torn) | {"pars": 1})
    worker.told(session_news(fine))
    worker.told({"op": "sync", "n": 1})
    worker.step()
    assert lines_with(index, "fine") == [0] and said[-1] == {"idle": 1}
    assert any("torn.par.edn cannot be read" in m.get("text", "") for m in said)


def test_forgotten_sessions_leave_the_index(tmp_path, index):
    worker = Worker(index, Said(), clock=lambda: 0.0)
    session = session_file(tmp_path, "s", ["ephemeral thing"])
    worker.told(session_news(session))
    worker.step()
    worker.told({"op": "forget", "key": session.path})
    worker.step()
    assert lines_with(index, "ephemeral") == [] and index.keys() == []


def test_a_damaged_index_is_rebuilt_from_every_known_session(tmp_path, index, monkeypatch):
    """Damage that SQLite reports mid-write cannot be made on demand: one add_lines raises it."""
    said = Said()
    worker = Worker(index, said, clock=lambda: 0.0)
    one, two = session_file(tmp_path, "one", ["first alpha"]), session_file(tmp_path, "two", ["second beta"])
    worker.told(session_news(one))
    worker.step()
    real_add = index.add_lines
    failures = [IndexUnusable("database disk image is malformed")]

    def add_lines(*args):
        if failures:
            raise failures.pop()
        return real_add(*args)

    monkeypatch.setattr(index, "add_lines", add_lines)
    worker.told(session_news(two))
    worker.step()
    assert {"reset": True} in said and any("damaged" in m.get("text", "") for m in said)
    worker.step()
    assert (lines_with(index, "alpha"), lines_with(index, "beta")) == ([0], [0])


# -- the feeder, on a Clock, with the worker's pipes in memory ------------------------


class WorkerPipes(StringTransport):
    """What a `ProcessProtocol` sees of a process: its stdin written to, closed, signalled."""

    def __init__(self):
        super().__init__()
        self.stdin_closed = False
        self.signals = []

    def closeStdin(self):
        self.stdin_closed = True

    def signalProcess(self, signal):
        self.signals.append(signal)

    def told(self) -> list[dict]:
        messages = [orjson.loads(raw) for raw in self.value().splitlines()]
        self.clear()
        return messages


class Reader:
    """The daemon's reading side of the index: only `reopen` matters to the feeder."""

    folder = "unused"
    reopened = 0

    def reopen(self):
        self.reopened += 1


def feeder_for(sessions: list, clock: Clock):
    workers = []

    def spawn(process):
        pipes = WorkerPipes()
        workers.append((process, pipes))
        process.makeConnection(pipes)

    feeder = IndexFeeder(Reader(), lambda: list(sessions), clock, spawn=spawn)
    feeder.startService()
    return feeder, workers


def test_the_feeder_tells_each_changed_session_once_per_flush(tmp_path):
    clock = Clock()
    session = session_file(tmp_path, "s", ["one", "two"])
    feeder, [(process, pipes)] = feeder_for([session], clock)
    assert pipes.told() == [session_news(session), {"op": "sync", "n": 1}]  # the first sweep
    process.outReceived(b'{"heard": 1}\n{"idle": 1}\n')
    assert feeder.caught_up()
    for _ in range(3):
        feeder.lines_appended(session, 0, [])
    assert pipes.told() == [] and not feeder.caught_up()
    session.count, session.size = 3, session.size + 10
    clock.advance(feeder.flush_seconds)
    assert pipes.told() == [session_news(session), {"op": "sync", "n": 2}]
    feeder.lines_appended(session, 3, [])
    clock.advance(feeder.flush_seconds)
    assert pipes.told() == []  # the worker has not read the last news: these wait for it
    process.outReceived(b'{"heard": 2}\n{"idl')
    assert pipes.told() == [session_news(session), {"op": "sync", "n": 3}] and not feeder.caught_up()
    process.outReceived(b'e": 2}\n{"heard": 3}\n{"idle": 3}\n')
    assert feeder.caught_up()


def test_a_par_counted_before_it_was_durable_is_told_again_once_it_is(tmp_path):
    clock = Clock()
    session = session_file(tmp_path, "s", ["one"])
    feeder, [(process, pipes)] = feeder_for([session], clock)
    process.outReceived(b'{"heard": 1}\n')
    pipes.told()
    session.par_count = 1  # accepted, not yet in the sidecar: a sweep tells it (the worker finds none)
    clock.advance(feeder.sweep_seconds)
    assert pipes.told()[0]["pars"] == 1
    process.outReceived(b'{"heard": 2}\n')
    feeder.par_added(session, 0, {})  # now durable: the same count is told again
    clock.advance(feeder.flush_seconds)
    assert pipes.told() == [session_news(session), {"op": "sync", "n": 3}]


def test_the_sweep_finds_grown_local_files_and_forgets_gone_ones(tmp_path):
    clock = Clock()
    stays, goes = session_file(tmp_path, "stays", ["a"]), session_file(tmp_path, "goes", ["b"])
    sessions = [stays, goes]
    feeder, [(process, pipes)] = feeder_for(sessions, clock)
    pipes.told()
    process.outReceived(b'{"heard": 1}\n')
    sessions.remove(goes)
    stays.count += 1
    clock.advance(feeder.sweep_seconds)
    told = pipes.told()
    assert {"op": "forget", "key": goes.path} in told and session_news(stays) in told
    assert not any(m.get("key") == goes.path and m["op"] == "session" for m in told)


def test_a_worker_that_dies_is_started_again_and_told_everything(tmp_path):
    clock = Clock()
    session = session_file(tmp_path, "s", ["one"])
    feeder, workers = feeder_for([session], clock)
    process, pipes = workers[0]
    process.processEnded(Failure(RuntimeError("killed by signal 9")))
    assert not feeder.caught_up()
    feeder.lines_appended(session, 1, [])
    clock.advance(feeder.flush_seconds)
    assert len(workers) == 1  # the restart waits
    clock.advance(1.0)
    assert len(workers) == 2
    assert [m["op"] for m in workers[1][1].told()] == ["session", "sync"]
    workers[1][0].processEnded(Failure(RuntimeError("crashed again")))
    clock.advance(1.0)
    assert len(workers) == 2  # a crash loop backs off: 2 s now
    clock.advance(1.0)
    assert len(workers) == 3
    clock.advance(120)  # a worker that ran for a while and then died is not part of the loop
    workers[2][0].processEnded(Failure(RuntimeError("died after two minutes")))
    clock.advance(1.0)
    assert len(workers) == 4


def test_the_worker_is_asked_to_stop_and_killed_if_it_does_not(tmp_path):
    clock = Clock()
    feeder, [(process, pipes)] = feeder_for([], clock)
    stopped = feeder.stopService()
    assert pipes.stdin_closed and not stopped.called
    clock.advance(10.0)
    assert pipes.signals == ["KILL"]
    process.processEnded(Failure(RuntimeError("killed")))
    assert stopped.called


def test_a_rebuilt_index_is_reopened_and_the_workers_log_is_the_daemons(tmp_path):
    from twisted.logger import globalLogPublisher

    clock = Clock()
    feeder, [(process, pipes)] = feeder_for([], clock)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        process.outReceived(b'{"reset": true}\n{"log": "warn", "text": "disk is slow"}\nTraceback (most\n')
        process.errReceived(b"oops\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert feeder.index.reopened == 1
    assert [(e["log_level"].name, e.get("text") or e.get("line")) for e in events] == [
        ("warn", "disk is slow"), ("error", "Traceback (most"), ("error", "oops")]
