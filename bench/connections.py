"""
Scenario 5, connections: 1000 upload connections opened (each proven open by a
ping/pong) and left idle; the daemon's total RSS.  The daemon's connection caps
(512 in all, 64 per address by default) are raised to let them in, since they all
come from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from websockets.asyncio.client import connect

from bench.clients import UPLOAD
from bench.common import MB, Row, rss, start_daemon

NAME = "5 connections"


def run(work: Path, quick: bool, count: int = 1000) -> list[Row]:
    cap = str(count + 16)
    daemon = start_daemon(work / "connections", "--max-connections", cap, "--max-connections-per-ip", cap)
    try:
        before = rss(daemon.process.pid)
        after = asyncio.run(hold(daemon, count))
    finally:
        daemon.stop()
    return [
        Row(NAME, f"daemon RSS with {count} idle upload connections", after / MB, "MB", higher_is_better=False,
            target="< 100 MB", met=after < 100 * MB,
            extra={"rss before MB": before / MB, "per connection KB": (after - before) / count / 1024}),
    ]


async def hold(daemon, count: int) -> int:
    sockets = []
    try:
        for _ in range(count):
            ws = await connect(daemon.url + UPLOAD, open_timeout=30, ping_interval=None)
            await ws.send('{"type":"ping"}')
            assert '"pong"' in await ws.recv()
            sockets.append(ws)
        await asyncio.sleep(1)  # let the daemon's per-connection buffers settle before reading RSS
        return rss(daemon.process.pid)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
