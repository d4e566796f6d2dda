"""
The promise itself: a real-shaped session of tens of MB uploaded by the real
`fulab-upload` while the daemon is SIGKILLed, the uploader is SIGKILLed and the
TCP connection is reset mid-frame, each at a random byte of the upload stream.
After every trial the server's file is the source, byte for byte.

`FULAB_CRASH_TRIALS` (default 10) and `FULAB_CRASH_MB` (default 32) scale it
up for a soak run, e.g. `FULAB_CRASH_TRIALS=100 pytest tests/test_crash_consistency.py`.
"""

import hashlib
import os
import random

import pytest

from fulabd import edn, packed
from fulabd.uploader.sender import MAX_FRAME_BYTES
from tests.fixtures import CuttableProxy, Daemon, Uploader, derived_session

TRIALS = int(os.environ.get("FULAB_CRASH_TRIALS", "10"))
SIZE = int(os.environ.get("FULAB_CRASH_MB", "32")) << 20
SEED = int(os.environ.get("FULAB_CRASH_SEED", "20261126"))
FAULTS = ("kill-daemon", "kill-uploader", "cut-tcp")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A derived session of tens of MB: real sample lines from ~100 B, and a few multi-MB lines."""
    path = derived_session(tmp_path_factory.mktemp("source") / "session.jsonl", SIZE, seed=SEED,
                           big_lines=3, big_line_size=4 << 20)
    data = path.read_bytes()
    assert max(len(line) for line in data.split(b"\n")) > 1 << 20
    return path


def smallest_stream(path) -> int:
    """The file packed as fulab-upload packs it (batches of at most 1 MiB, one stream), at its highest level."""
    packer = packed.Packer(stream=True, clock=lambda: 0.0)  # a clock that stands still: the level stays put
    packer.level = packed.LEVELS[-1]
    total, batch, size = 0, [], 0
    for line in path.read_bytes().split(b"\n")[:-1]:
        if batch and size + len(line) + 1 > MAX_FRAME_BYTES:
            total += len(packer.encode({"type": "events", "session-id": "s", "seq": 0}, batch))
            batch, size = [], 0
        batch.append(line)
        size += len(line) + 1
    return total + len(packer.encode({"type": "events", "session-id": "s", "seq": 0}, batch))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(TRIALS))
def test_upload_survives_kills_and_cuts_at_random_moments(tmp_path, source, trial):
    rng = random.Random(SEED * 1000 + trial)
    faults = rng.sample(FAULTS, len(FAULTS))
    # Each fault fires at a random byte of the stream, whose packed frames hold the file at least as
    # compressed as `smallest_stream` (framing, resends and a lower level only add to it).
    stream = smallest_stream(source)
    moments = sorted(rng.randrange(1, stream) for _ in faults)
    daemon = Daemon(tmp_path / "remote").start()
    proxy = CuttableProxy(daemon.port)
    upload = ("--url", proxy.url + "/fulab/lab/upload/ws", "--path", str(source), "--once", "--quiet")
    uploader = Uploader(*upload).start()
    fired = []
    try:
        for fault, moment in zip(faults, moments):
            ahead = moment - proxy.forwarded
            if fault == "cut-tcp":
                proxy.cut_after(ahead)
            assert proxy.reached(ahead).wait(300), f"the upload stream never reached byte {moment} for {fault}"
            if fault == "kill-daemon":
                daemon.restart(kill=True)
            elif fault == "kill-uploader":
                uploader.kill()
                uploader = Uploader(*upload).start()
            proxy.go_on()
            fired.append((fault, moment))
        assert uploader.wait(300) == 0, "\n".join(uploader.output)
        daemon.stop()
        check_stored(daemon.root, source)
    finally:
        uploader.kill()
        proxy.close()
        daemon.stop()
    assert [fault for fault, _ in fired] == faults


def check_stored(root, source):
    """The stored session is the source: no line lost, none doubled, sidecars that parse."""
    [stored] = root.glob("*.jsonl")
    data, expected = stored.read_bytes(), source.read_bytes()
    if data != expected:
        have, want = data.split(b"\n"), expected.split(b"\n")
        first = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
        raise AssertionError(f"stored file differs from the source at line {first}: "
                             f"{len(have) - 1} lines stored, {len(want) - 1} in the source")
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected).hexdigest()
    meta = edn.loads(stored.with_name(stored.name.replace(".jsonl", ".meta.edn")).read_bytes())
    assert meta["event-count"] == expected.count(b"\n")
    par = stored.with_name(stored.name.replace(".jsonl", ".par.edn"))
    if par.exists():
        assert isinstance(edn.loads(par.read_bytes()), list)
    assert not list(root.glob("*.tmp")) and not list(root.glob("*.unreadable-*"))
