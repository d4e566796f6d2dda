"""
What a crash leaves on disk, and what the store makes of it at startup.

A crash mid-append can leave a torn last line; a crash mid-sidecar-write can
leave a `.tmp` file next to the old sidecar.  Recovery must give back exactly
the whole lines that were on disk, and sidecars that parse.
"""

import os
import random
import signal
import subprocess
import sys
import time

import edn_format
import orjson
import pytest
from twisted.internet import task
from websockets.sync.client import connect

from fulabd import edn
from fulabd.store import READ_CHUNK, SessionStore
from tests.fixtures import REPO, Daemon, derived_session, real_sample_files, sample_lines

K = edn_format.Keyword


def recovered(root, name: str) -> tuple[int, bytes]:
    """Start a store on `root` as the daemon does at startup: (resume count, file bytes)."""
    store = SessionStore(str(root), clock=task.Clock())
    store.load()
    counts = []
    store.resume(name).addCallback(counts.append)
    return counts[0], (root / f"{name}.jsonl").read_bytes()


# A real Codex rollout and a real Claude session (recovery fsyncs each cut file, so not every sample).
TORN_SAMPLES = [path for path in real_sample_files() if path.name.startswith(("rollout-", "06090cb1"))]


@pytest.mark.parametrize("sample", TORN_SAMPLES, ids=lambda path: path.stem[:13])
def test_torn_last_line_recovers_to_the_whole_lines_at_every_byte_offset(tmp_path, sample):
    data = sample.read_bytes()
    whole = data[:data.rstrip(b"\n").rfind(b"\n") + 1]
    lines = whole.count(b"\n")
    session = tmp_path / "s.jsonl"
    for cut in range(len(whole), len(data)):
        session.write_bytes(data[:cut])
        assert recovered(tmp_path, "s") == (lines, whole), cut
    session.write_bytes(data)
    assert recovered(tmp_path, "s") == (lines + 1, data)


def test_torn_multi_megabyte_last_line_recovers_across_read_chunks(tmp_path):
    source = derived_session(tmp_path / "source.jsonl", 4 << 20, seed=7, big_lines=1, big_line_size=3 << 20)
    data = source.read_bytes()
    # The derived session ends with a big line: cut the file right after it.
    lines = data.split(b"\n")
    big_end = max(range(len(lines) - 1), key=lambda i: len(lines[i]))
    data = b"\n".join(lines[:big_end + 1]) + b"\n"
    whole = data[:data.rstrip(b"\n").rfind(b"\n") + 1]
    last = len(data) - len(whole)
    assert last > READ_CHUNK + 2
    cuts = {len(whole) + offset for offset in (0, 1, 2, READ_CHUNK - 1, READ_CHUNK, READ_CHUNK + 1,
                                               last - READ_CHUNK, last - 2, last - 1)}
    cuts |= {len(whole) + offset for offset in random.Random(1).sample(range(last), 20)}
    session = tmp_path / "s.jsonl"
    for cut in sorted(cuts):
        session.write_bytes(data[:cut])
        assert recovered(tmp_path, "s") == (whole.count(b"\n"), whole), cut


@pytest.mark.slow
def test_daemon_restarted_on_a_torn_file_resumes_and_the_resend_completes_it(tmp_path):
    sample = max(real_sample_files(), key=lambda path: path.stat().st_size)
    lines = sample_lines(sample)
    daemon = Daemon(tmp_path / "remote").start()
    try:
        with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
            ws.send(orjson.dumps({"type": "init", "session-id": "torn", "events": lines[:200]}).decode())
            assert orjson.loads(ws.recv(timeout=30))["count"] == 200
        daemon.kill()
        # As if the daemon died inside the write of line 200: half of it reached the file.
        with open(daemon.root / "torn.jsonl", "ab") as f:
            f.write(lines[200].encode()[:len(lines[200]) // 2])
        daemon.start()
        daemon.wait_for_log(r"session torn: cut a torn last line")
        with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
            ws.send(orjson.dumps({"type": "resume", "session-id": "torn"}).decode())
            count = orjson.loads(ws.recv(timeout=30))["count"]
            assert count == 200
            ws.send(orjson.dumps({"type": "events", "session-id": "torn", "seq": count,
                                  "events": lines[count:]}).decode())
            assert orjson.loads(ws.recv(timeout=30))["count"] == len(lines)
        daemon.stop()
        assert (daemon.root / "torn.jsonl").read_bytes() == sample.read_bytes()
        meta = edn_format.loads((daemon.root / "torn.meta.edn").read_text())
        assert meta[K("event-count")] == len(lines) and meta[K("session-id")] == "torn"
    finally:
        daemon.stop()


@pytest.mark.slow
def test_sidecars_are_read_back_after_a_crash(daemon):
    """After SIGKILL and restart the daemon knows the session's metadata and PARs as they were."""
    par = {"id": "par-1", "title": "t", "tags": ["a", "b"]}
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": "r", "source": "claude", "cwd": "/w",
                              "events": ["1"]}).decode())
        ws.send(orjson.dumps({"type": "par", "session-id": "r", "par": par}).decode())
        assert [orjson.loads(ws.recv(timeout=30))["type"] for _ in range(2)] == ["ack", "ack"]
    daemon.stop()
    before = edn.loads((daemon.root / "r.meta.edn").read_bytes())
    daemon.start()
    daemon.restart(kill=True)
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        ws.send(orjson.dumps({"type": "par", "session-id": "r", "par": par}).decode())
        again = orjson.loads(ws.recv(timeout=30))
        ws.send(orjson.dumps({"type": "events", "session-id": "r", "seq": 1, "events": ["2"]}).decode())
        assert orjson.loads(ws.recv(timeout=30))["count"] == 2
    assert (again["dedup"], again["pars"]) == (True, 1)
    daemon.stop()
    after = edn.loads((daemon.root / "r.meta.edn").read_bytes())
    assert {key: after[key] for key in ("session-id", "created-at", "source", "cwd")} == {
        key: before[key] for key in ("session-id", "created-at", "source", "cwd")}
    assert after["event-count"] == 2 and after["par-count"] == 1
    [stored] = edn.loads((daemon.root / "r.par.edn").read_bytes())
    assert stored == par | {"timestamp": stored["timestamp"]}


OLD_META = {"session-id": "m", "event-count": 2, "par-count": 0, "source": "codex"}


@pytest.mark.parametrize("leftover", [b"", b"{:session-id \"m\" :event-co", None], ids=["empty", "partial", "whole"])
@pytest.mark.parametrize("sidecar", ["meta", "par"])
def test_interrupted_sidecar_write_leaves_the_old_sidecar_and_the_store_starts(tmp_path, leftover, sidecar):
    (tmp_path / "m.jsonl").write_bytes(b"a\nb\n")
    (tmp_path / "m.meta.edn").write_bytes(edn.dumps(OLD_META))
    old_pars = [{"id": "par-1", "title": "old"}]
    (tmp_path / "m.par.edn").write_bytes(edn.dumps(old_pars))
    # Killed between writing the temporary file and renaming it over the sidecar.
    new = edn.dumps(OLD_META | {"event-count": 3}) if sidecar == "meta" else edn.dumps(old_pars + [{"id": "par-2"}])
    (tmp_path / f"m.{sidecar}.edn.tmp").write_bytes(new if leftover is None else leftover)
    store = SessionStore(str(tmp_path), clock=task.Clock())
    store.load()
    session = store.get("m")
    assert session.count == 2 and session.meta["source"] == "codex" and session.meta["event-count"] == 2
    assert [par["id"] for par in store.pars(session)] == ["par-1"]
    assert edn.loads((tmp_path / "m.meta.edn").read_bytes()) == OLD_META
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.jsonl", "m.meta.edn", "m.par.edn"]


WRITER = """
import sys
from fulabd import edn
path = sys.argv[1]
version = 0
while True:
    version += 1
    edn.write_atomically(path, edn.dumps({"version": version, "filler": "x" * (version % 5000)}))
    if version == 3:
        print("writing", flush=True)
"""


@pytest.mark.slow
def test_meta_written_while_the_writer_is_killed_is_always_old_or_new(tmp_path):
    """SIGKILL a process rewriting a sidecar in a loop, at random moments: the sidecar always parses."""
    path = tmp_path / "s.meta.edn"
    rng = random.Random(3)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    versions = []
    for trial in range(20):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
        assert writer.stdout.readline() == b"writing\n"
        time.sleep(rng.uniform(0, 0.05))  # a random moment, not a synchronisation
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        writer.stdout.close()
        meta = edn.loads(path.read_bytes())
        assert meta["filler"] == "x" * (meta["version"] % 5000), trial
        versions.append(meta["version"])
        store = SessionStore(str(tmp_path), clock=task.Clock())
        (tmp_path / "s.jsonl").touch()
        store.load()
        assert not (tmp_path / "s.meta.edn.tmp").exists()
        assert edn.loads(path.read_bytes()) == meta
    assert len(set(versions)) > 1
