"""
The real `fulab-upload` process against the real daemon, on real files, through real faults:
the daemon SIGKILLed and restarted, the connection cut inside a frame, the uploader itself killed.
"""

import hashlib
import os
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

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)

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
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(SAMPLES), "--backfill", "--once",
                        "--originator", "laptop").start()
    assert uploader.wait() == 0, "\n".join(uploader.output)
    for sample in sample_files():
        identity = identify(sample)
        assert stored(daemon, identity.session_id).read_bytes() == sample.read_bytes(), sample
    rollout = identify(next(p for p in sample_files() if p.name.startswith("rollout-")))
    meta = edn_format.loads((daemon.root / f"{safe_id(rollout.session_id)}.meta.edn").read_text())
    assert (meta[edn_format.Keyword("originator")], meta[edn_format.Keyword("cwd")]) == ("laptop", rollout.meta["cwd"])
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
            proxy.cut_after(30_000)  # packed frames are ~10x smaller than the lines they carry
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
        for line in derived_lines(8000):
            out.write(line + b"\n")
    args = ("--url", daemon.url + UPLOAD, "--path", str(session), "--source", "claude", "--once")
    first = Uploader(*args).start()
    server_copy = stored(daemon, identify(session, "claude").session_id)
    wait_until(lambda: size_of(server_copy) > 3_000_000, what="part of the file on the server")
    first.kill()
    assert 0 < size_of(server_copy) < session.stat().st_size
    second = Uploader(*args).start()
    second.wait_for_output("connected")
    killed_at = size_of(server_copy)
    wait_until(lambda: size_of(server_copy) > killed_at + 3_000_000, what="more of the file on the server")
    assert second.terminate() == 0, "\n".join(second.output)
    held = server_copy.read_bytes()
    assert held.endswith(b"\n") and session.read_bytes().startswith(held) and len(held) < session.stat().st_size
    third = Uploader(*args).start()
    assert third.wait() == 0, "\n".join(third.output)
    assert sha256(server_copy) == sha256(session)
    again = Uploader(*args).start()
    assert again.wait() == 0
    assert sha256(server_copy) == sha256(session)


@pytest.mark.parametrize("notice", ["events", "poll"])
def test_watch_finds_new_files_subagents_and_uploads_a_rewritten_file_as_a_new_generation(daemon, tmp_path, notice):
    codex = tmp_path / "home" / ".codex" / "sessions"
    claude = tmp_path / "home" / ".claude" / "projects"
    codex.mkdir(parents=True)
    claude.mkdir(parents=True)
    old_sample = SAMPLES / "claude" / "projects" / "-path-to-Demo" / "1af7fc5e-8455-4414-9ccd-011d40f70b2a.jsonl"
    old = claude / "-path-to-Demo" / old_sample.name
    old.parent.mkdir()
    old.write_bytes(old_sample.read_bytes())
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(codex), "--watch", str(claude),
                        *(["--poll"] if notice == "poll" else [])).start()
    uploader.wait_for_output("connected; resuming 0 session")

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

    assert not stored(daemon, old.stem).exists(), "a file older than --active-minutes was uploaded"
    with open(old, "ab") as out:
        out.write(b'{"type":"summary","summary":"appended later","leafUuid":"x"}\n')
    uploader.wait_for_output(f"live {old.stem} ")
    assert stored(daemon, old.stem).read_bytes() == old.read_bytes()

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
    from websockets.sync.client import connect

    with connect(daemon.url + UPLOAD) as ws:  # a PAR is for a session that has lines
        ws.send(orjson.dumps({"type": "init", "session-id": "s1", "events": ['{"type":"user"}']}).decode())
        assert orjson.loads(ws.recv(timeout=30))["count"] == 1
    proxy = CuttableProxy(daemon.port)
    par = tmp_path / "par.edn"
    par.write_text('{:title "Uploader" :tags [:upload :test] :questions {:intention "ship" :happening "tests" '
                   ':perspectives "laptop" :learned "resume" :forward "merge"}}')
    lines = tmp_path / "s1.jsonl"  # a PAR is stored only for a session that has lines
    lines.write_text('{"type":"user","message":{"content":"hi"}}\n')
    assert Uploader("--url", daemon.url + UPLOAD, "--path", str(lines), "--once", "--quiet").start().wait() == 0
    try:
        uploader = Uploader("par", "--url", proxy.url + UPLOAD, "--session", "s1", "--file", str(par),
                            "--token", "sekrit").start()
        assert uploader.wait() == 0, "\n".join(uploader.output)
    finally:
        proxy.close()
    assert b"authorization: bearer sekrit" in proxy.requests[0].lower()
    stored_pars = edn_format.loads((daemon.root / "s1.par.edn").read_text())
    assert stored_pars[0][edn_format.Keyword("title")] == "Uploader"


def test_tls_verifies_the_server_certificate(tmp_path, ca):
    cert, key = ca.issue("server")
    daemon = Daemon(tmp_path / "remote", "--tls-port", "0", "--tls-interface", "127.0.0.1",
                    "--tls-cert", str(cert), "--tls-key", str(key)).start()
    session = SAMPLES / "claude" / "projects" / "-path-to-Demo" / "5c0375b4-57a5-4f26-b12d-d022ee4e51b7.jsonl"
    url = f"wss://localhost:{daemon.tls_port}{UPLOAD}"
    try:
        untrusted = Uploader("--url", url, "--path", str(session), "--once").start()
        untrusted.wait_for_output("certificate verify failed.*pass --cafile")
        assert untrusted.terminate() == 0
        assert not stored(daemon, session.stem).exists()
        trusted = Uploader("--url", url, "--path", str(session), "--once", "--cafile", str(ca.root_path)).start()
        assert trusted.wait() == 0, "\n".join(trusted.output)
        assert stored(daemon, session.stem).read_bytes() == session.read_bytes()
    finally:
        daemon.stop()


def test_through_nginx_across_a_daemon_crash(nginx, daemon, ca, tmp_path):
    session = tmp_path / "via-nginx.jsonl"
    session.write_bytes(b"".join(line + b"\n" for line in derived_lines(6000)))
    uploader = Uploader("--url", nginx.url + UPLOAD, "--path", str(session), "--source", "claude",
                        "--cafile", str(ca.root_path)).start()
    server_copy = stored(daemon, identify(session, "claude").session_id)
    try:
        wait_until(lambda: size_of(server_copy) > 3_000_000, what="part of the file through nginx")
        daemon.kill()
        assert size_of(server_copy) < session.stat().st_size
        daemon.restart(kill=True)
        wait_until(lambda: size_of(server_copy) == session.stat().st_size, what="the whole file through nginx")
        assert sha256(server_copy) == sha256(session)
        assert uploader.terminate() == 0
    finally:
        uploader.kill()


def test_a_line_over_the_server_limit_is_reported_and_the_rest_goes_in_smaller_batches(tmp_path):
    daemon = Daemon(tmp_path / "remote", "--max-message-size", "200000").start()
    session = tmp_path / "limited.jsonl"
    derived = derived_lines(1200)
    lines = [line for line in derived if len(line) < 60_000]
    huge = next(line for line in derived if len(line) > 1_000_000)
    session.write_bytes(b"".join(line + b"\n" for line in lines + [huge, lines[0]]))
    try:
        uploader = Uploader("--url", daemon.url + UPLOAD, "--path", str(session), "--source", "claude").start()
        uploader.wait_for_output(r"server refused .*too-large.*raise the server's --max-message-size")
        server_copy = stored(daemon, identify(session, "claude").session_id)
        wait_until(lambda: size_of(server_copy) == sum(len(line) + 1 for line in lines), what="all lines but the huge")
        assert server_copy.read_bytes() == b"".join(line + b"\n" for line in lines)
        assert uploader.terminate() == 0
    finally:
        daemon.stop()


def test_a_dead_link_is_noticed_by_pings_and_the_upload_goes_on(daemon, tmp_path):
    proxy = CuttableProxy(daemon.port)
    session = tmp_path / "quiet.jsonl"
    lines = derived_lines(300)
    session.write_bytes(b"".join(line + b"\n" for line in lines[:100]))
    uploader = Uploader("--url", proxy.url + UPLOAD, "--path", str(session), "--source", "codex",
                        "--ping-interval", "1").start()
    try:
        uploader.wait_for_output("live quiet ")
        proxy.freeze()
        with open(session, "ab") as out:
            out.write(b"".join(line + b"\n" for line in lines[100:]))
        uploader.wait_for_output("connection lost")
        wait_until(lambda: stored(daemon, "quiet").read_bytes() == session.read_bytes(), what="the lines after")
        assert uploader.terminate() == 0
    finally:
        uploader.kill()
        proxy.close()


def run_in_terminal(*args: str) -> tuple[int, str]:
    """`fulab-upload` with a pseudo-terminal as its stdout and stderr: what a user at a terminal sees."""
    import os
    import pty

    from tests.fixtures import REPO

    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, str(REPO / "bin" / "fulab-upload"), *args], stdout=slave,
                               stderr=slave, env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(60), output.decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_only(daemon, tmp_path):
    session = tmp_path / "backlog.jsonl"
    session.write_bytes(b"".join(line + b"\n" for line in derived_lines(2000)))
    args = ("--url", daemon.url + UPLOAD, "--path", str(session), "--source", "claude", "--once")
    code, output = run_in_terminal(*args)
    assert code == 0, output
    assert "catching up 1 session(s):" in output and "MB to go" in output
    assert "live " in output and "done: 2,000 lines" in output
    piped = Uploader(*args).start()
    assert piped.wait() == 0
    assert not any("catching up" in line for line in piped.output)


def test_a_file_rewritten_while_the_uploader_was_not_running_becomes_a_new_generation(daemon, tmp_path):
    sample = SAMPLES / "claude" / "projects" / "-path-to-Demo" / "5c0375b4-57a5-4f26-b12d-d022ee4e51b7.jsonl"
    session = tmp_path / sample.name
    session.write_bytes(sample.read_bytes())
    args = ("--url", daemon.url + UPLOAD, "--path", str(session), "--once")
    assert Uploader(*args).start().wait() == 0
    lines = sample.read_bytes().split(b"\n")[:-1]
    rewritten = b"".join(line + b"\n" for line in lines[:1] + lines[2:] + lines[:5])
    session.write_bytes(rewritten)
    second = Uploader(*args).start()
    assert second.wait() == 0, "\n".join(second.output)
    second.wait_for_output(f"conflict in {sample.stem}: .*uploaded as session {sample.stem}~g2")
    assert stored(daemon, sample.stem).read_bytes() == sample.read_bytes()
    assert stored(daemon, f"{sample.stem}~g2").read_bytes() == rewritten
    meta = edn_format.loads((daemon.root / f"{safe_id(sample.stem + '~g2')}.meta.edn").read_text())
    assert meta[edn_format.Keyword("parent-session-id")] == sample.stem


def test_compressed_rollouts_are_uploaded_decompressed_as_the_same_session(daemon, tmp_path):
    import zstandard

    codex = tmp_path / "home" / ".codex" / "sessions"
    rollout = next(sample for sample in sample_files() if "rollout-" in sample.name)
    other = next(sample for sample in sample_files() if "codex" in sample.parts and sample != rollout)
    rollouts = [rollout, other]
    old, both = (codex / "2026" / "05" / (sample.name + ".zst") for sample in rollouts)
    old.parent.mkdir(parents=True)
    for target, sample in ((old, rollouts[0]), (both, rollouts[1])):
        target.write_bytes(zstandard.ZstdCompressor().compress(sample.read_bytes()))
    plain = both.with_suffix("")  # rollout-….jsonl beside its .zst: the uncompressed one is the session
    plain.write_bytes(rollouts[1].read_bytes())
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(codex), "--backfill", "--once").start()
    assert uploader.wait() == 0, "\n".join(uploader.output)
    assert stored(daemon, identify(rollouts[0]).session_id).read_bytes() == rollouts[0].read_bytes()
    assert stored(daemon, identify(rollouts[1]).session_id).read_bytes() == rollouts[1].read_bytes()
    assert len(list(daemon.root.glob("*.jsonl"))) == 2
    [compressed] = uploader.wait_for_output(r"uploaded .*\(compressed: read once, not followed\)")
    assert str(old) in compressed
    assert not any(str(both) in line for line in uploader.output), "the .zst beside its .jsonl is left alone"


def test_a_session_with_a_line_that_is_not_utf8_is_resumed_not_started_again(daemon, tmp_path):
    """Its start-up checks are sent packed, as its lines were: as JSON text they never matched the stored bytes,
    and every restart uploaded the whole session again as a new generation."""
    sample = SAMPLES / "claude" / "projects" / "-path-to-Demo" / "5c0375b4-57a5-4f26-b12d-d022ee4e51b7.jsonl"
    lines = sample.read_bytes().split(b"\n")[:-1]
    content = b"".join(line + b"\n" for line in [b'{"type":"user","bad":"\xff\xfe\xc3("}'] + lines)  # line 0: checked
    session = tmp_path / sample.name
    session.write_bytes(content)
    args = ("--url", daemon.url + UPLOAD, "--path", str(session), "--once")
    for _ in range(2):
        run = Uploader(*args).start()
        assert run.wait() == 0, "\n".join(run.output)
        assert not any("conflict" in line for line in run.output), "\n".join(run.output)
    assert stored(daemon, sample.stem).read_bytes() == content
    assert [path.name for path in daemon.root.glob("*.jsonl")] == [f"{sample.stem}.jsonl"]


def test_a_compressed_file_damaged_from_its_start_is_named_and_once_exits_1(daemon, tmp_path):
    import zstandard

    folder = tmp_path / "sessions"
    folder.mkdir()
    good = next(sample for sample in sample_files() if "rollout-" in sample.name)
    (folder / good.name).write_bytes(good.read_bytes())
    data = bytearray(zstandard.ZstdCompressor().compress(good.read_bytes()))
    data[20:60] = bytes(40)
    damaged = folder / "rollout-damaged.jsonl.zst"
    damaged.write_bytes(bytes(data))
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(folder), "--backfill", "--once").start()
    assert uploader.wait() == 1, "\n".join(uploader.output)
    uploader.wait_for_output(rf"cannot read {damaged} \(.*does not decompress")
    uploader.wait_for_output(r"done, but 1 file\(s\) could not be read")
    assert stored(daemon, identify(folder / good.name).session_id).read_bytes() == good.read_bytes()


def test_a_compressed_file_still_being_written_is_uploaded_once_it_is_whole(daemon, tmp_path):
    """zstd's reader ends a frame cut short as if it were the file's end: half a file was said to be
    uploaded, and the rest was never read."""
    import zstandard

    folder = tmp_path / "sessions"
    folder.mkdir()
    sample = next(sample for sample in sample_files() if "rollout-" in sample.name)
    data = zstandard.ZstdCompressor().compress(sample.read_bytes())
    growing = folder / sample.name.replace(".jsonl", "-late.jsonl.zst")
    uploader = Uploader("--url", daemon.url + UPLOAD, "--watch", str(folder)).start()
    try:
        uploader.wait_for_output(r"connected")
        growing.write_bytes(data[:len(data) // 2])
        uploader.wait_for_output(rf"cannot read {growing} \(it ends inside a zstd frame: it is still being written")
        with open(growing, "ab") as f:
            f.write(data[len(data) // 2:])
        uploader.wait_for_output(rf"uploaded .* from {growing} \(compressed")
        assert stored(daemon, identify(sample).session_id).read_bytes() == sample.read_bytes()
    finally:
        uploader.terminate()


def test_a_compressed_session_is_uploaded_again_to_a_server_that_lost_it(tmp_path):
    """A compressed file is read once, not followed, but a server that comes back without it (another store, a
    restored backup) is asked, as for any session: it was never sent again."""
    import zstandard

    folder = tmp_path / "sessions"
    folder.mkdir()
    sample = next(sample for sample in sample_files() if "rollout-" in sample.name)
    compressed = folder / (sample.name + ".zst")
    compressed.write_bytes(zstandard.ZstdCompressor().compress(sample.read_bytes()))
    first = Daemon(tmp_path / "first").start()
    uploader = Uploader("--url", first.url + UPLOAD, "--watch", str(folder), "--backfill").start()
    try:
        uploader.wait_for_output(r"uploaded .*\(compressed: read once, not followed\)")
        assert stored(first, identify(sample).session_id).read_bytes() == sample.read_bytes()
        first.stop()
        second = Daemon(tmp_path / "second", port=f"tcp:{first.port}:interface=127.0.0.1").start()
        try:
            wait_until(lambda: stored(second, identify(sample).session_id).exists()
                       and stored(second, identify(sample).session_id).read_bytes() == sample.read_bytes(),
                       what="the compressed session on the new server")
        finally:
            second.stop()
    finally:
        uploader.terminate()
