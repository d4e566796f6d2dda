"""
The session store on real files, with the clock and the commit thread under the test's control.
"""

import os

import edn_format
import pytest
from twisted.internet import defer, task

from fulabd.messages import ProtocolError
from fulabd.store import SessionStore, count_lines, cut_torn_tail, line_ends, safe_id
from tests.fixtures import sample_files


class ManualThread:
    """Stands in for the commit thread: runs each job when the test says so."""

    def __init__(self):
        self.jobs = []

    def __call__(self, function, *args):
        result = defer.Deferred()
        self.jobs.append((function, args, result))
        return result

    def run_all(self):
        while self.jobs:
            function, args, result = self.jobs.pop(0)
            result.callback(function(*args))


class Recorder:
    def __init__(self):
        self.lines, self.pars = [], []

    def lines_appended(self, session, first, lines):
        self.lines.append((session.session_id, first, list(lines)))

    def par_added(self, session, index, par):
        self.pars.append((session.session_id, index, par["id"]))


def make_store(root, thread=None, hub=None, **options):
    clock = task.Clock()
    clock.advance(1_800_000_000)
    store = SessionStore(str(root), clock=clock, hub=hub,
                         run_in_thread=thread or (lambda f, *a: defer.maybeDeferred(f, *a)), **options)
    store.startService()
    if isinstance(thread, ManualThread):
        thread.run_all()  # the start-up load
    return store, clock


def result_of(deferred):
    results = []
    deferred.addBoth(results.append)
    assert results, "deferred has not fired"
    if isinstance(results[0], defer.Failure):
        results[0].raiseException()
    return results[0]


@pytest.mark.parametrize("raw, expected", [
    ("019e9625-802f-7e91-840a-cfe88d14117a", "019e9625-802f-7e91-840a-cfe88d14117a"),
    ("a.b_c-D", "a.b_c-D"),
])
def test_safe_ids_that_need_no_change_are_kept(raw, expected):
    assert safe_id(raw) == expected


@pytest.mark.parametrize("raw", ["a/b", "../../etc/passwd", ".hidden", "", "x" * 200, "a b", "日本"])
def test_changed_ids_get_a_hash_suffix_and_stay_inside(raw):
    safe = safe_id(raw)
    assert "/" not in safe and not safe.startswith(".") and len(safe) <= 128 + 9
    assert safe.rsplit("-", 1)[1] == __import__("hashlib").sha256(raw.encode()).hexdigest()[:8]


def test_ack_waits_for_the_commit_thread(tmp_path):
    thread = ManualThread()
    store, _ = make_store(tmp_path, thread)
    acked = store.append("s", 0, [b"one", b"two"])
    assert not acked.called, "acked before fdatasync"
    assert (tmp_path / "s.jsonl").read_bytes() == b"one\ntwo\n"
    thread.run_all()
    assert result_of(acked).count == 2


def test_writes_arriving_during_a_sessions_sync_wait_for_its_next_and_other_sessions_do_not_wait(tmp_path):
    thread = ManualThread()
    store, _ = make_store(tmp_path, thread)
    first = store.append("s", 0, [b"1"])
    second = store.append("s", 1, [b"2"])
    other = store.append("t", 0, [b"3"])

    def run_syncs_of(session_id):
        """Run the queued jobs of one session; the lines each one made durable."""
        mine = [job for job in thread.jobs if job[1][0].session.session_id == session_id]
        for job in mine:
            thread.jobs.remove(job)
            function, (commit,), done = job
            done.callback(function(commit))
        return [commit.lines for _, (commit,), _ in mine]

    assert run_syncs_of("t") == [1]
    assert result_of(other).count == 1, "t waited for s's sync"
    assert not first.called and not second.called
    assert run_syncs_of("s") == [1], "s had two syncs in flight"
    assert result_of(first).count == 1
    assert not second.called, "line 2 was acked by a sync that began before it was written"
    assert run_syncs_of("s") == [2]
    assert result_of(second).count == 2


def test_lines_reach_the_hub_only_once_durable(tmp_path):
    thread, hub = ManualThread(), Recorder()
    store, _ = make_store(tmp_path, thread, hub)
    store.append("s", 0, [b"a", b"b"])
    assert hub.lines == []
    thread.run_all()
    store.append("s", 2, [b"c"])
    thread.run_all()
    assert hub.lines == [("s", 0, [b"a", b"b"]), ("s", 2, [b"c"])]


def test_dedup_conflict_and_gap_change_nothing(tmp_path):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"a", b"b", b"c"]))
    assert result_of(store.append("s", 1, [b"b"])).dedup is True
    with pytest.raises(ProtocolError) as conflict:
        result_of(store.append("s", 1, [b"b", b"X", b"d"]))
    assert (conflict.value.code, conflict.value.extra["line"]) == ("conflict", 2)
    with pytest.raises(ProtocolError) as gap:
        result_of(store.append("s", 4, [b"e"]))
    assert (gap.value.code, gap.value.extra["expected"]) == ("gap", 3)
    assert (tmp_path / "s.jsonl").read_bytes() == b"a\nb\nc\n"


def test_failed_fdatasync_acks_nothing_and_rolls_back_to_the_durable_size(tmp_path, monkeypatch):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b"kept"]))

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(ProtocolError) as failed:
        result_of(store.append("s", 1, [b"lost"]))
    assert failed.value.code == "storage-failed"
    assert (tmp_path / "s.jsonl").read_bytes() == b"kept\n"
    monkeypatch.undo()
    assert result_of(store.resume("s")) == 1
    assert result_of(store.append("s", 1, [b"again"])).count == 2
    assert (tmp_path / "s.jsonl").read_bytes() == b"kept\nagain\n"


def test_restart_cuts_a_torn_tail_and_reads_the_sidecars(tmp_path):
    store, clock = make_store(tmp_path)
    result_of(store.append("s/1", 0, [b'{"a":1}', b'{"b":2}'], {"source": "claude", "project": "p"}))
    result_of(store.add_par("s/1", {"title": "t", "tags": ["x"]}))
    result_of(store.stopService())
    path = tmp_path / f"{safe_id('s/1')}.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"torn":')
    again, _ = make_store(tmp_path)
    session = again.get("s/1")
    assert (session.session_id, session.count, session.par_count) == ("s/1", 2, 1)
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    assert session.meta["source"] == "claude"
    assert result_of(again.resume("s/1")) == 2


def test_meta_is_written_at_most_once_a_second_while_lines_stream(tmp_path):
    store, clock = make_store(tmp_path)
    result_of(store.append("s", 0, [b"0"], {"source": "codex"}))
    meta_path = tmp_path / "s.meta.edn"
    written = meta_path.stat().st_mtime_ns
    first = meta_path.read_bytes()
    for index in range(1, 50):
        result_of(store.append("s", index, [str(index).encode()]))
    assert meta_path.read_bytes() == first, "meta rewritten on every append"
    clock.advance(1.0)
    meta = edn_format.loads(meta_path.read_text())
    assert meta[edn_format.Keyword("event-count")] == 50
    assert meta_path.stat().st_mtime_ns >= written


def test_pars_are_deduplicated_by_id_and_published(tmp_path):
    hub = Recorder()
    store, _ = make_store(tmp_path, hub=hub)
    result_of(store.append("s", 0, [b"x"]))
    index, par, added = result_of(store.add_par("s", {"id": "p1", "title": "T", "tags": "a, b"}))
    assert (index, added, par["tags"]) == (0, True, ["a", "b"])
    assert result_of(store.add_par("s", {"id": "p1", "title": "T"}))[2] is False
    assert hub.pars == [("s", 0, "p1")]
    stored = edn_format.loads((tmp_path / "s.par.edn").read_text())
    assert len(stored) == 1 and stored[0][edn_format.Keyword("tags")][0] == edn_format.Keyword("a")


def test_unreadable_sidecar_is_set_aside_not_overwritten(tmp_path):
    (tmp_path / "s.jsonl").write_bytes(b"x\n")
    (tmp_path / "s.par.edn").write_bytes(b"[{:id \"p1\" :title")
    store, _ = make_store(tmp_path)
    assert store.get("s").par_count == 0
    aside = [p for p in os.listdir(tmp_path) if p.startswith("s.par.edn.unreadable-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == b"[{:id \"p1\" :title"


def test_read_lines_pages_by_bytes(tmp_path):
    store, _ = make_store(tmp_path)
    lines = [b"x" * 100 for _ in range(50)]
    result_of(store.append("s", 0, lines))
    session = store.get("s")
    page = store.read_lines(session, 10, max_bytes=1000)
    assert page == lines[10:19]
    assert store.read_lines(session, 49, max_bytes=10) == [lines[49]]
    assert store.read_lines(session, 0, max_lines=3) == lines[:3]


def test_line_helpers_agree_with_real_samples(tmp_path):
    for sample in sample_files():
        data = sample.read_bytes()
        assert count_lines(str(sample)) == data.count(b"\n")
        ends = line_ends(str(sample), len(data))
        assert len(ends) == data.count(b"\n") and (not ends or ends[-1] == len(data))


def test_cut_torn_tail_of_a_file_without_any_newline(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"no newline at all")
    assert cut_torn_tail(str(path)) == 17
    assert path.read_bytes() == b""


def test_every_acked_session_is_fdatasynced_even_when_more_sessions_write_than_descriptors_are_open(
        tmp_path, monkeypatch):
    synced = []
    real = os.fdatasync

    def fdatasync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    thread = ManualThread()
    store, _ = make_store(tmp_path, thread, max_open_files=1)
    acks = [store.append(name, 0, [name.encode()]) for name in ("a", "b", "c")]
    thread.run_all()
    assert [result_of(ack).count for ack in acks] == [1, 1, 1]
    assert sorted(synced) == ["a.jsonl", "b.jsonl", "c.jsonl"]
