"""
The disk's own fdatasync tail, for scenario 2 to print beside the daemon's
acks: a loop of 200-byte appends, each followed by `os.fdatasync`, on 16
threads over 50 files (the live scenario's sessions), the way the daemon
syncs its sessions side by side.  No daemon, no Python protocol code: what is
left of an ack's latency once this is subtracted is the daemon's.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

RECORD = b"x" * 199 + b"\n"


def fdatasync_latencies(folder: Path, seconds: float, threads: int = 16, files: int = 50) -> list[float]:
    """Each fdatasync's duration in seconds; thread `t` appends to files t, t+threads, … in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    fds = [os.open(folder / f"disk-{number}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
           for number in range(files)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    deadline = time.perf_counter() + seconds

    def loop(thread: int):
        mine = fds[thread::threads]
        while time.perf_counter() < deadline:
            for fd in mine:
                os.write(fd, RECORD)
                started = time.perf_counter()
                os.fdatasync(fd)
                latencies[thread].append(time.perf_counter() - started)

    workers = [threading.Thread(target=loop, args=(thread,)) for thread in range(min(threads, files))]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        for fd in fds:
            os.close(fd)
        for number in range(files):
            (folder / f"disk-{number}.log").unlink()
    return [latency for per_thread in latencies for latency in per_thread]
