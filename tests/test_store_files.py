"""
Files bounded and never through a symlink: the store's append descriptors are
a bounded LRU, an open that fails is `storage-failed` with a reason, ids that
store nothing leave nothing behind, and symlinks in the root (pointing outside
it) are neither followed, truncated nor written through.
"""

import os
import resource
import threading

import orjson
import pytest
from websockets.sync.client import connect

from fulabd.messages import ProtocolError
from tests.fixtures import Daemon, get_json
from tests.test_store import ManualThread, make_store, result_of


def open_files_under(folder) -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder) + os.sep):
            names.append(target)
    return names


def test_append_descriptors_stay_within_the_bound_and_reopen_on_demand(tmp_path):
    store, _ = make_store(tmp_path, max_open_files=4)
    for number in range(40):
        result_of(store.append(f"s{number}", 0, [b"first"]))
        assert len(open_files_under(tmp_path)) <= 4
    for number in range(40):
        assert result_of(store.append(f"s{number}", 1, [b"second"])).count == 2
    assert all((tmp_path / f"s{number}.jsonl").read_bytes() == b"first\nsecond\n" for number in range(40))
    assert len(open_files_under(tmp_path)) <= 4


def test_ids_that_store_nothing_leave_no_session_behind(tmp_path):
    store, _ = make_store(tmp_path)
    for number in range(100):
        with pytest.raises(ProtocolError):
            result_of(store.append(f"never-{number}", 5, [b"x"]))  # a gap: nothing stored
        store.attach(f"never-{number}")
        assert result_of(store.resume(f"never-{number}")) == 0
    assert store.sessions() == [] and store._sessions == {} and os.listdir(tmp_path) == []


def test_a_symlinked_session_file_is_left_alone_and_uploads_to_it_fail_with_the_reason(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious, no newline at the end")
    root = tmp_path / "remote"
    root.mkdir()
    (root / "evil.jsonl").symlink_to(outside)
    store, _ = make_store(root)
    assert store.get("evil") is None and store.sessions() == []
    with pytest.raises(ProtocolError) as refused:
        result_of(store.append("evil", 0, [b"line"]))
    assert refused.value.code == "storage-failed" and "symlink" in refused.value.detail
    result_of(store.stopService())
    assert outside.read_bytes() == b"precious, no newline at the end" and (root / "evil.jsonl").is_symlink()


@pytest.mark.parametrize("sidecar", ["meta.edn", "par.edn", "meta.edn.tmp", "par.edn.tmp"])
def test_a_symlinked_sidecar_is_replaced_never_written_through(tmp_path, sidecar):
    outside = tmp_path / "outside.edn"
    outside.write_bytes(b"{:keep true}")
    root = tmp_path / "remote"
    root.mkdir()
    (root / f"s.{sidecar}").symlink_to(outside)
    store, _ = make_store(root)
    result_of(store.append("s", 0, [b"line"], {"source": "codex"}))
    result_of(store.add_par("s", {"title": "t"}))
    result_of(store.stopService())
    assert outside.read_bytes() == b"{:keep true}"
    assert not (root / f"s.{sidecar}").is_symlink()


@pytest.mark.slow
def test_one_connection_creates_2000_sessions_under_a_1024_file_limit_while_others_are_served(tmp_path):
    daemon = Daemon(tmp_path / "remote", max_open_files=1024).start()
    sessions = 2000
    others = []

    def other_client():
        """Another uploader, the health check and the listing, while the big upload is in flight."""
        with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
            ws.send(orjson.dumps({"type": "init", "session-id": "other", "events": ["{}"]}).decode())
            others.append(orjson.loads(ws.recv(timeout=60)))
        others.append(get_json(daemon.http + "/fulab/lab/status")["running"])

    try:
        with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
            replies = []
            for number in range(sessions):
                ws.send(orjson.dumps({"type": "init", "session-id": f"s{number}", "events": ["{}"]}).decode())
                if number % 100 == 99:
                    replies += [orjson.loads(ws.recv(timeout=60)) for _ in range(100)]
                if number == sessions // 2:
                    helper = threading.Thread(target=other_client)
                    helper.start()
                    helper.join(60)
            open_now = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
        with open(f"/proc/{daemon.process.pid}/limits") as limits:
            assert "Max open files            1024" in limits.read()
        assert [reply.get("count") for reply in replies] == [1] * sessions, [r for r in replies if "err" in r][:3]
        assert others[0]["count"] == 1 and others[1] is True
        assert open_now < 1024
        listing = get_json(daemon.http + "/fulab/lab/sessions")["sessions"]
        assert len(listing) == sessions + 1
    finally:
        daemon.stop()
    assert len(list((tmp_path / "remote").glob("*.jsonl"))) == sessions + 1


def test_out_of_descriptors_is_storage_failed_with_the_reason_and_the_store_recovers(tmp_path):
    store, clock = make_store(tmp_path)
    result_of(store.append("old", 0, [b"line"]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        with pytest.raises(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        # Out of descriptors: the store gives up its own idle ones first ("old" is closed, "new" opens) ...
        assert result_of(store.append("new", 0, [b"line"])).count == 1
        assert result_of(store.append("old", 1, [b"more"])).count == 2
        # ... and when it has none left to give (idle ones are closed after a minute), the append fails with
        # the reason.
        clock.advance(61)
        with pytest.raises(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(ProtocolError) as refused:
            result_of(store.append("newer", 0, [b"line"]))
        assert refused.value.code == "storage-failed" and "Too many open files" in refused.value.detail
        assert store.get("newer") is None
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result_of(store.append("newer", 0, [b"line"])).count == 1


def test_lines_of_a_file_closed_to_make_room_before_its_commit_are_still_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fdatasync

    def fdatasync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    thread = ManualThread()
    store, _ = make_store(tmp_path, thread=thread, max_open_files=2)
    acked = [store.append(f"s{number}", 0, [b"line"]) for number in range(5)]  # one commit for all five
    thread.run_all()
    assert [result_of(ack).count for ack in acked] == [1] * 5
    assert sorted(synced) == sorted(str(tmp_path / f"s{number}.jsonl") for number in range(5))
