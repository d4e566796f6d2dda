"""
The disk's own fdatasync tail, for scenario 2 to print beside the daemon's
acks: a loop of 200-byte appends, each followed by `os.fdatasync`, on 16
threads over 50 files (the live scenario's sessions), the way the daemon
syncs its sessions side by side.  No daemon, no Python protocol code: what is
left of an ack's latency once this is subtracted is the daemon's.

`line_floor` asks the question an ack's latency is really about: a line due at
a random moment waits for its session's sync in flight and then for its own,
so a disk that stalls now and then for everyone holds back every line due
during the stall, however rare the stall is among the syncs themselves.
"""

from __future__ import annotations

import bisect
import os
import random
import threading
import time
from pathlib import Path

RECORD = b"x" * 199 + b"\n"


def synced_appends(folder: Path, seconds: float, threads: int, files: int) -> list[list[tuple[float, float]]]:
    """For each file, the (start, end) of every fdatasync done to it for `seconds`, each after a 200-byte
    append; thread `t` syncs files t, t+threads, … in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    fds = [os.open(folder / f"disk-{number}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
           for number in range(files)]
    syncs: list[list[tuple[float, float]]] = [[] for _ in range(files)]
    deadline = time.perf_counter() + seconds

    def loop(thread: int):
        while time.perf_counter() < deadline:
            for number in range(thread, files, threads):
                os.write(fds[number], RECORD)
                started = time.perf_counter()
                os.fdatasync(fds[number])
                syncs[number].append((started, time.perf_counter()))

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
    return syncs


def fdatasync_latencies(folder: Path, seconds: float, threads: int = 16, files: int = 50) -> list[float]:
    """Each fdatasync's duration in seconds."""
    return [end - start for per_file in synced_appends(folder, seconds, threads, files) for start, end in per_file]


def line_floor(folder: Path, seconds: float, files: int = 50, samples: int = 200_000) -> list[float]:
    """What lines due at random moments would wait on this disk with an ideal daemon: one thread per file
    syncs it back to back (one sync in flight per session); a line due at `t` on a file waits until the end
    of the first sync of that file that starts after `t`."""
    syncs = synced_appends(folder, seconds, files, files)
    rng = random.Random(0)
    starts = [[start for start, _ in per_file] for per_file in syncs]
    first = max(per_file[0][0] for per_file in syncs)
    last = min(per_file[-1][0] for per_file in syncs)  # every sample has a sync that starts after it
    waits = []
    for _ in range(samples if last > first else 0):
        number = rng.randrange(files)
        due = rng.uniform(first, last)
        waits.append(syncs[number][bisect.bisect_right(starts[number], due)][1] - due)
    return waits
