"""
Soak run (not in CI): many sessions written live and uploaded by one
`fulab-upload --watch`, viewers connected to them, for `--minutes`; the
daemon's RSS sampled over time.  At the end every stored file must equal its
source and every viewer must have seen every line exactly once, in order.

    python -m bench.soak [--minutes 60] [--sessions 50] [--viewers 20] [--rate 200]

Writes bench/results/soak-<time>.csv (the samples) and .json (the summary).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from bench.common import MB, client_cpu, peak_rss, pin, rss, start_daemon
from tests.fixtures import REPO, get_json, real_sample_files, sample_lines

RESULTS = Path(__file__).resolve().parent / "results"
MAX_SESSIONS = 500


class Viewer:
    """A viewer of one session's stream that checks it sees each line once, in order."""

    def __init__(self, url: str, session_id: str):
        self.url = f"{url}/fulab/lab/stream/ws?session={session_id}&raw=1"
        self.next_line = 0
        self.errors: list[str] = []
        self.reconnects = 0

    async def run(self, stop: asyncio.Event):
        while not stop.is_set():
            try:
                async with connect(f"{self.url}&offset={self.next_line}", max_size=None) as ws:
                    while not stop.is_set():
                        frame = orjson.loads(await ws.recv())
                        for event in frame.get("events", []) + ([frame["event"]] if "event" in frame else []):
                            self.seen(event)
            except Exception as e:  # a dropped viewer reconnects from where it was, as the UI does
                if stop.is_set():
                    return
                self.reconnects += 1
                self.errors.append(f"reconnect after {type(e).__name__}: {e}")
                await asyncio.sleep(1)

    def seen(self, event: dict):
        line = event.get("line")
        if not isinstance(line, int):
            return
        if line != self.next_line:
            self.errors.append(f"line {line} arrived when {self.next_line} was expected")
        self.next_line = max(self.next_line, line + 1)


async def soak(args, work: Path) -> dict:
    pool = [line.encode() + b"\n" for path in real_sample_files() for line in sample_lines(path)]
    rng = random.Random(args.seed)
    watched = work / "sessions"
    watched.mkdir()
    files = [watched / f"{uuid.UUID(int=rng.getrandbits(128))}.jsonl" for _ in range(args.sessions)]
    for path in files:
        path.write_bytes(pool[0])
    daemon = start_daemon(work / "remote")
    uploader = subprocess.Popen([sys.executable, str(REPO / "bin" / "fulab-upload"), "--url",
                                 daemon.url + "/fulab/lab/upload/ws", "--watch", str(watched), "--quiet"],
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    stop = asyncio.Event()
    samples = []
    try:
        await wait_for(lambda: len(get_json(daemon.http + "/fulab/lab/sessions")["sessions"]) == len(files), 120)
        viewers = [Viewer(daemon.url, path.stem) for path in files[:args.viewers]]
        tasks = [asyncio.create_task(viewer.run(stop)) for viewer in viewers]
        started = time.monotonic()
        deadline = started + args.minutes * 60
        next_sample = started
        appended = 0
        while time.monotonic() < deadline:
            due = int((time.monotonic() - started) * args.rate)
            while appended < due:
                with open(files[rng.randrange(len(files))], "ab") as f:
                    f.write(pool[rng.randrange(len(pool))])
                appended += 1
            if time.monotonic() >= next_sample:
                samples.append(sample(daemon, uploader, started, appended))
                print(f"{samples[-1]['seconds']:7.0f} s  daemon RSS {samples[-1]['daemon rss MB']:6.1f} MB  "
                      f"lines {appended:,}", file=sys.stderr, flush=True)
                next_sample += args.interval
            await asyncio.sleep(0.05)
        await wait_for(lambda: stored_all(daemon, files), 300)
        await wait_for(lambda: all(viewer.next_line == count_lines(path) for viewer, path in zip(viewers, files)),
                       120)
        samples.append(sample(daemon, uploader, started, appended))
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        uploader.terminate()
        uploader.wait(30)
        daemon.stop()
    mismatched = [path.name for path in files
                  if sha256(path) != sha256(work / "remote" / path.name)]
    viewer_errors = [error for viewer in viewers for error in viewer.errors if not error.startswith("reconnect")]
    return {"samples": samples, "lines": appended, "sessions": len(files), "viewers": len(viewers),
            "files differing from their source": mismatched, "viewer order errors": viewer_errors[:20],
            "viewer reconnects": sum(viewer.reconnects for viewer in viewers)}


def sample(daemon, uploader, started: float, appended: int) -> dict:
    pid = daemon.process.pid
    return {"seconds": round(time.monotonic() - started, 1), "lines appended": appended,
            "daemon rss MB": round(rss(pid) / MB, 1), "daemon peak rss MB": round(peak_rss(pid) / MB, 1),
            "daemon fds": len(os.listdir(f"/proc/{pid}/fd")), "uploader rss MB": round(rss(uploader.pid) / MB, 1)}


def stored_all(daemon, files) -> bool:
    return all((daemon.root / path.name).exists() and
               (daemon.root / path.name).stat().st_size == path.stat().st_size for path in files)


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


async def wait_for(condition, timeout: float):
    """Poll `condition` (bounded): the soak run watches outside processes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200, help="lines appended per second, over all sessions")
    parser.add_argument("--interval", type=float, default=10, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS or not 0 <= args.viewers <= args.sessions:
        parser.error(f"--sessions must be 1..{MAX_SESSIONS} and --viewers at most --sessions")
    pin(os.getpid(), client_cpu())
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="soak-", dir=RESULTS) as work:
        summary = asyncio.run(soak(args, Path(work)))
    with open(RESULTS / f"soak-{stamp}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary["samples"][0]))
        writer.writeheader()
        writer.writerows(summary["samples"])
    (RESULTS / f"soak-{stamp}.json").write_bytes(orjson.dumps(summary | {"args": vars(args)},
                                                              option=orjson.OPT_INDENT_2))
    rss_values = [s["daemon rss MB"] for s in summary["samples"]]
    ok = not summary["files differing from their source"] and not summary["viewer order errors"]
    print(f"soak: {summary['lines']:,} lines into {summary['sessions']} sessions, {summary['viewers']} viewers; "
          f"daemon RSS first {rss_values[0]} MB, max {max(rss_values)} MB, last {rss_values[-1]} MB; "
          f"{'all files equal their sources, viewers saw every line once' if ok else 'FAILED: ' + str(summary)}")
    print(f"samples in {RESULTS / f'soak-{stamp}.csv'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
