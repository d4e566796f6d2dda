"""
Scenario 3, end to end: a line appended to a session file on disk, picked up
by a following `fulab-upload`, stored durably, and seen by a viewer connected
to the session's stream.  Lines are appended at a steady 50 lines/s; each
latency runs from the append to the viewer's frame.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from bench import disk
from bench.common import Row, percentile, start_daemon
from bench.live import small_lines
from tests.fixtures import Uploader, get_json, real_sample_files

NAME = "3 end to end"
RATE = 50.0


def run(work: Path, quick: bool) -> list[Row]:
    count = 100 if quick else 1000
    sample = next(path for path in real_sample_files() if path.name.startswith("1af7fc5e"))
    session_id = sample.stem
    watched = work / "e2e" / sample.name
    watched.parent.mkdir(parents=True)
    shutil.copy(sample, watched)
    initial = sample.read_bytes().count(b"\n")
    daemon = start_daemon(work / "e2e-remote")
    uploader = Uploader("--url", daemon.url + "/fulab/lab/upload/ws", "--path", str(watched), "--quiet").start()
    try:
        try:
            wait_until_stored(daemon, session_id, initial)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nuploader:\n" + "\n".join(uploader.output[-20:]) +
                               "\ndaemon:\n" + "\n".join(daemon.log[-20:])) from None
        latencies = asyncio.run(measure(daemon, session_id, watched, initial, count, small_lines()))
    finally:
        uploader.kill()
        daemon.stop()
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    floor = disk.line_floor(work / "disk", 2.0 if quick else 10.0, files=1)
    return [
        Row(NAME, f"file append -> viewer frame p50 ({count} lines at {RATE:g}/s, inotify uploader)", p50, "ms",
            higher_is_better=False),
        Row(NAME, "file append -> viewer frame p99", p99, "ms", higher_is_better=False, target="< 100 ms",
            met=p99 < 100, extra={"max ms": max(latencies) * 1000, "lines": len(latencies)}),
        *(Row(NAME, f"the disk alone, same run: a line due at a random moment on a file synced back to back, {name}",
              value * 1000, "ms", kind="context", higher_is_better=False)
          for name, value in (("p50", percentile(floor, 50)), ("p99", percentile(floor, 99)),
                              ("max", max(floor, default=0)))),
        Row(NAME, "old lab: upload -> /?path= viewer p50 (futon3-lab.md §10; not measured here)", 364, "ms",
            kind="context", higher_is_better=False),
    ]


def wait_until_stored(daemon, session_id: str, lines: int, timeout: float = 30) -> None:
    """Poll the listing until the uploader has stored the file's first lines (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = get_json(daemon.http + "/fulab/lab/sessions")["sessions"]
        if any(s["session-id"] == session_id and s["events"] >= lines for s in sessions):
            return
        time.sleep(0.05)
    raise RuntimeError(f"session {session_id} was not uploaded within {timeout} s")


async def measure(daemon, session_id: str, watched: Path, first: int, count: int, pool: list[str]) -> list[float]:
    appended: dict[int, float] = {}
    seen: dict[int, float] = {}
    url = f"{daemon.url}/fulab/lab/stream/ws?session={session_id}&offset={first}&raw=1"
    async with connect(url, max_size=None) as ws:
        while orjson.loads(await ws.recv())["type"] != "history-end":
            pass

        async def view():
            while len(seen) < count:
                frame = orjson.loads(await ws.recv())
                event = frame.get("event", frame)
                if isinstance(event, dict) and isinstance(event.get("line"), int):
                    seen.setdefault(event["line"], time.perf_counter())

        viewer = asyncio.create_task(view())
        fd = os.open(watched, os.O_WRONLY | os.O_APPEND)
        try:
            start = time.perf_counter()
            for index in range(count):
                await asyncio.sleep(max(0.0, start + index / RATE - time.perf_counter()))
                os.write(fd, pool[index % len(pool)].encode() + b"\n")
                appended[first + index] = time.perf_counter()
        finally:
            os.close(fd)
        await asyncio.wait_for(viewer, 60)
    return [seen[line] - appended[line] for line in appended]
