"""
Scenario 6, a laptop's uplink: `fulab-upload --once` of a 100 MB session over a
link shaped to 20 Mbit/s, beside the link's floor for the raw bytes and for the
same bytes compressed whole with `zstd -3`, and beside `rsync -z` of the same
file over the same link (what a user would pick instead).

The link is the loopback of a network namespace made for the run, shaped with
`tc qdisc … tbf` (netem is not available here) and given a 1500-byte MTU (with
loopback's 64 KiB MTU a small tbf burst drops every large frame).  The daemon,
the uploader and rsync all run inside it; the scenario is skipped, with the
reason, where namespaces, tc, rsync or zstd are not available.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

from bench.common import MB, Row, varied_session

NAME = "6 uplink, 20 Mbit/s"
RATE_MBIT = 20
TOOLS = ("ip", "tc", "rsync", "zstd")


def run(work: Path, quick: bool) -> list[Row]:
    size = (10 if quick else 100) * MB
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        reason = f"needs root and {', '.join(TOOLS)} (missing: {', '.join(missing) or 'root'})"
        print(f"skipping {NAME}: {reason}", file=sys.stderr)
        return [Row(NAME, f"skipped: {reason}", 0, "s", kind="context")]
    source = varied_session(work, size)
    total = source.stat().st_size
    compressed = len(subprocess.run(["zstd", "-3", "-c", str(source)], check=True, capture_output=True).stdout)
    namespace = f"fulab-bench-{os.getpid()}"
    try:
        shape(namespace)
        inner = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-m", "bench.link",
                                str(work), str(source)], check=True, capture_output=True, cwd=Path(__file__).parent.parent)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{NAME} failed: {e.stderr.decode(errors='replace')[-2000:]}") from None
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], stderr=subprocess.DEVNULL)
    timings = orjson.loads(inner.stdout.splitlines()[-1])
    floor = lambda nbytes: nbytes * 8 / (RATE_MBIT * 1e6)  # noqa: E731
    packed, rsync = timings["fulab-upload"], timings["rsync -z"]
    label = f"{total / MB:.0f} MB ({compressed / MB:.1f} MB as zstd -3)"
    return [
        Row(NAME, f"fulab-upload --once, {label}, to durable ack", packed, "s", higher_is_better=False,
            target="<= 1.3x compressed floor, < rsync -z",
            met=packed <= 1.3 * floor(compressed) and packed < rsync,
            extra={"vs compressed floor": packed / floor(compressed), "vs rsync -z": packed / rsync}),
        Row(NAME, "link floor for the bytes compressed whole (zstd -3)", floor(compressed), "s", kind="baseline",
            higher_is_better=False),
        Row(NAME, "rsync -z of the same file over the same link", rsync, "s", kind="baseline",
            higher_is_better=False),
        Row(NAME, "link floor for the raw bytes", floor(total), "s", kind="context", higher_is_better=False),
        Row(NAME, "fulab-upload --once --no-compress (JSON text frames)", timings["text frames"], "s",
            kind="context", higher_is_better=False),
    ]


def shape(namespace: str) -> None:
    """A namespace whose loopback carries at most RATE_MBIT, in 1500-byte packets."""
    for command in (["ip", "netns", "add", namespace],
                    ["ip", "-n", namespace, "link", "set", "lo", "mtu", "1500", "up"],
                    ["ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                     "rate", f"{RATE_MBIT}mbit", "burst", "32kb", "latency", "400ms"]):
        subprocess.run(command, check=True, capture_output=True)


def measure(work: Path, source: Path) -> dict:
    """Inside the namespace: each upload's wall time; fulabd's gated on the stored copy's sha256."""
    from tests.fixtures import Daemon, Uploader

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    timings = {}
    for name, flags in (("fulab-upload", ()), ("text frames", ("--no-compress",))):
        daemon = Daemon(work / name.replace(" ", "-")).start()
        try:
            started = time.perf_counter()
            uploader = Uploader("--url", daemon.url + "/fulab/lab/upload/ws", "--path", str(source), "--once",
                                "--quiet", *flags).start()
            assert uploader.wait(900) == 0, "\n".join(uploader.output)
            timings[name] = time.perf_counter() - started
        finally:
            daemon.stop()
        [stored] = daemon.root.glob("*.jsonl")
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest, f"{name}: stored file differs"
    timings["rsync -z"] = rsync(work, source)
    return timings


def rsync(work: Path, source: Path) -> float:
    """`rsync -z` to an rsync daemon on the namespace's loopback; the copy is checked too."""
    from tests.fixtures import free_port, stop_process

    target = work / "rsync-target"
    target.mkdir()
    port = free_port()
    config = work / "rsyncd.conf"
    config.write_text(f"port = {port}\nuse chroot = no\n[lab]\npath = {target}\nread only = no\nuid = root\n"
                      "gid = root\n")
    server = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={config}"])
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["rsync", f"rsync://127.0.0.1:{port}/"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "the rsync daemon did not start"
        started = time.perf_counter()
        subprocess.run(["rsync", "-z", str(source), f"rsync://127.0.0.1:{port}/lab/"], check=True)
        elapsed = time.perf_counter() - started
    finally:
        stop_process(server)
    assert (target / source.name).read_bytes() == source.read_bytes(), "rsync's copy differs"
    return elapsed


if __name__ == "__main__":
    print(orjson.dumps(measure(Path(sys.argv[1]), Path(sys.argv[2]))).decode())
