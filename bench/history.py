"""
Scenario 4, viewer history: a viewer opens a big stored session; the time
until its last history event (`history-end`) and the daemon's peak RSS growth
while serving it (VmHWM after, minus VmRSS before, peak reset before).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from bench import clients
from bench.common import MB, Row, peak_rss, read_lines, reset_peak_rss, rss, session_file, start_daemon

NAME = "4 viewer history"


def run(work: Path, quick: bool) -> list[Row]:
    size = (20 if quick else 100) * MB
    source = session_file(work, size)
    lines = read_lines(source)
    root = work / "history"
    daemon = start_daemon(root)
    try:
        asyncio.run(clients.events_batches(daemon.url, "big", lines))
    finally:
        daemon.stop()
    daemon = start_daemon(root)  # a fresh process: nothing of the upload left in its memory
    try:
        before = rss(daemon.process.pid)
        reset_peak_rss(daemon.process.pid)
        started = time.perf_counter()
        events, frames = asyncio.run(read_history(daemon.url, "deflate"))  # as a browser asks
        elapsed = time.perf_counter() - started
        growth = peak_rss(daemon.process.pid) - before
        started = time.perf_counter()
        asyncio.run(read_history(daemon.url, None))
        plain = time.perf_counter() - started
    finally:
        daemon.stop()
    label = f"{source.stat().st_size / MB:.0f} MB, {len(lines):,} lines"
    return [
        Row(NAME, f"open a {label} session: time to history-end (permessage-deflate, as browsers ask)", elapsed,
            "s", higher_is_better=False, extra={"events": events, "frames": frames}),
        Row(NAME, "the same, again, without permessage-deflate", plain, "s", kind="context", higher_is_better=False),
        Row(NAME, "daemon peak RSS growth while serving it", growth / MB, "MB", higher_is_better=False,
            target="< 64 MB", met=growth < 64 * MB, extra={"rss before MB": before / MB}),
    ]


async def read_history(url: str, compression: str | None) -> tuple[int, int]:
    events = frames = 0
    async with connect(f"{url}/fulab/lab/stream/ws?session=big", max_size=None, compression=compression) as ws:
        while True:
            frame = orjson.loads(await ws.recv())
            frames += 1
            if frame["type"] == "init":
                events += len(frame.get("events", []))
            elif frame["type"] == "event":
                events += 1
            elif frame["type"] == "history-end":
                return events, frames
            elif frame["type"] == "error":
                raise RuntimeError(frame)
