"""
The real `fulab-upload` process against the real daemon, on real files, through real faults:
the daemon SIGKILLed and restarted, the connection cut inside a frame, the uploader itself killed.
"""

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import edn_format
import orjson
import pytest

from fulabd.store import safe_id
from fulabd.uploader.identity import identify
from tests.fixtures import SAMPLES, CuttableProxy, Daemon, Uploader, sample_files

UPLOAD = "/fulab/lab/upload/ws"


def stored(daemon: Daemon, session_id: str) -> Path:
    return daemon.root / f"{safe_id(session_id)}.jsonl"


def wait_until(predicate, timeout: float = 60, what: str = "condition"):
    """Poll a condition on real files (the server's copy) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_sample_is_stored_byte_identical(daemon, tmp_path):
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(SAMPLES), "--backfill", "--once").start()
    assert uploader.wait() == 0, "\n".join(uploader.output)
    for sample in sample_files():
        identity = identify(sample)
        assert stored(daemon, identity.session_id).read_bytes() == sample.read_bytes(), sample
    subagent = next(p for p in sample_files() if p.parent.name == "subagents")
    identity = identify(subagent)
    assert identity.session_id == f"{subagent.parent.parent.name}/{subagent.stem}"
    meta = edn_format.loads((daemon.root / f"{safe_id(identity.session_id)}.meta.edn").read_text())
    assert meta[edn_format.Keyword("parent-session-id")] == subagent.parent.parent.name
    assert len(uploader.wait_for_output(r"live ")) == len(sample_files())


def derived_lines(count: int) -> list[bytes]:
    """Lines of the real samples, repeated, with some several-megabyte lines built from them."""
    source = [line for sample in sample_files() for line in sample.read_bytes().split(b"\n")[:-1]]
    lines = []
    for index in range(count):
        line = source[index % len(source)]
        if index % 400 == 399:
            line = orjson.dumps({"derived-from": index, "copies": [line.decode()] * (3_000_000 // len(line) + 1)})
        lines.append(line)
    return lines


WRITER = r"""
import sys, time
path, source, pace = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(source, "rb") as lines, open(path, "ab", buffering=0) as out:
    for index, line in enumerate(lines):
        if index % 7 == 3:
            cut = len(line) // 3
            out.write(line[:cut]); time.sleep(0.01); out.write(line[cut:2 * cut]); time.sleep(0.01)
            out.write(line[2 * cut:])
        else:
            out.write(line)
        time.sleep(pace)
"""


def start_writer(tmp_path, target: Path, lines: list[bytes], pace: float) -> subprocess.Popen:
    source = tmp_path / "writer-source.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(source), str(pace)])


def test_live_file_survives_server_kills_and_cut_connections(tmp_path):
    lines = derived_lines(1600)
    daemon = Daemon(tmp_path / "remote").start()
    proxy = CuttableProxy(daemon.port)
    session = tmp_path / "laptop" / "live.jsonl"
    session.parent.mkdir()
    session.write_bytes(b"")
    writer = start_writer(tmp_path, session, lines, pace=0.004)
    uploader = Uploader("--url", proxy.url + UPLOAD, "--path", str(session), "--source", "codex").start()
    server_copy = stored(daemon, "live")
    try:
        for round_ in range(3):
            wait_until(lambda: size_of(server_copy) > (round_ + 1) * 1_500_000, what="server progress")
            daemon.restart(kill=True)
            wait_until(lambda: size_of(server_copy) > (round_ + 1) * 1_500_000 + 500_000, what="progress")
            proxy.cut_after(300_000)
            wait_until(lambda: proxy.cuts == round_ + 1, what="a cut inside a frame")
        assert writer.wait(120) == 0
        expected = b"".join(line + b"\n" for line in lines)
        assert session.read_bytes() == expected
        wait_until(lambda: size_of(server_copy) >= len(expected), timeout=90, what="the whole file on the server")
        assert sha256(server_copy) == sha256(session)
        assert uploader.terminate() == 0
    finally:
        writer.kill()
        uploader.kill()
        proxy.close()
        daemon.stop()


def test_uploader_killed_mid_file_resumes_without_duplicates(daemon, tmp_path):
    session = tmp_path / "big.jsonl"
    with open(session, "wb") as out:
        for line in derived_lines(4000):
            out.write(line + b"\n")
    args = ("--url", daemon.url + UPLOAD, "--path", str(session), "--source", "claude", "--once")
    first = Uploader(*args).start()
    server_copy = stored(daemon, identify(session, "claude").session_id)
    wait_until(lambda: size_of(server_copy) > 3_000_000, what="part of the file on the server")
    first.kill()
    assert 0 < size_of(server_copy) < session.stat().st_size
    second = Uploader(*args).start()
    assert second.wait() == 0, "\n".join(second.output)
    assert sha256(server_copy) == sha256(session)
    third = Uploader(*args).start()
    assert third.wait() == 0
    assert sha256(server_copy) == sha256(session)


def test_watch_finds_new_files_subagents_and_uploads_a_rewritten_file_as_a_new_generation(daemon, tmp_path):
    codex = tmp_path / "home" / ".codex" / "sessions"
    claude = tmp_path / "home" / ".claude" / "projects"
    codex.mkdir(parents=True)
    claude.mkdir(parents=True)
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(codex), "--watch", str(claude)).start()
    uploader.wait_for_output("connected")

    rollout_sample = next(p for p in sample_files() if "rollout-" in p.name)
    rollout = codex / "2026" / "06" / "05" / rollout_sample.name
    rollout.parent.mkdir(parents=True)
    rollout.write_bytes(rollout_sample.read_bytes())
    layout = SAMPLES / "claude" / "curated-not-real" / "subagent-layout"
    project = claude / "-tmp"
    shutil.copytree(layout, project)
    parent_id = "0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f"
    subagent_id = f"{parent_id}/agent-a0ad4f44468bdf20d"
    for session_id in (identify(rollout).session_id, parent_id, subagent_id):
        uploader.wait_for_output(f"live {session_id} ")
    assert stored(daemon, identify(rollout).session_id).read_bytes() == rollout_sample.read_bytes()
    assert stored(daemon, subagent_id).read_bytes() == (layout / parent_id / "subagents" /
                                                        "agent-a0ad4f44468bdf20d.jsonl").read_bytes()

    rewritten = b"".join(line + b"\n" for line in rollout_sample.read_bytes().split(b"\n")[:3])
    rewritten += b'{"type":"event_msg","payload":{"type":"agent_message","message":"rewritten"}}\n'
    rollout.write_bytes(rewritten)
    uploader.wait_for_output(r"conflict in .*~g2")
    generation = identify(rollout).session_id + "~g2"
    wait_until(lambda: stored(daemon, generation).exists() and
               stored(daemon, generation).read_bytes() == rewritten, what="the new generation")
    assert stored(daemon, identify(rollout).session_id).read_bytes() == rollout_sample.read_bytes()
    assert uploader.terminate() == 0


def test_par_is_sent_with_the_token(daemon, tmp_path):
    proxy = CuttableProxy(daemon.port)
    par = tmp_path / "par.edn"
    par.write_text('{:title "Uploader" :tags [:upload :test] :questions {:intention "ship" :happening "tests" '
                   ':perspectives "laptop" :learned "resume" :forward "merge"}}')
    try:
        uploader = Uploader("par", "--url", proxy.url + UPLOAD, "--session", "s1", "--file", str(par),
                            "--token", "sekrit").start()
        assert uploader.wait() == 0, "\n".join(uploader.output)
    finally:
        proxy.close()
    assert b"authorization: bearer sekrit" in proxy.requests[0].lower()
    stored_pars = edn_format.loads((daemon.root / "s1.par.edn").read_text())
    assert stored_pars[0][edn_format.Keyword("title")] == "Uploader"
