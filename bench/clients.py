"""
Upload clients used by the scenarios (asyncio `websockets`, independent of fulabd's own code).
"""

from __future__ import annotations

import asyncio

import orjson
from websockets.asyncio.client import connect

UPLOAD = "/fulab/lab/upload/ws"


async def events_batches(url: str, session_id: str, lines: list[str], batch_bytes: int = 1 << 20,
                         window: int = 4) -> None:
    """The new protocol: `events` batches of about `batch_bytes`, `window` of them in flight."""
    batches, start, size = [], 0, 0
    for index, line in enumerate(lines):
        size += len(line)
        if size >= batch_bytes:
            batches.append((start, lines[start:index + 1]))
            start, size = index + 1, 0
    if start < len(lines):
        batches.append((start, lines[start:]))
    async with connect(url + UPLOAD, max_size=None) as ws:
        slots = asyncio.Semaphore(window)

        async def receive():
            for _ in batches:
                reply = orjson.loads(await ws.recv())
                assert reply["type"] == "ack", reply
                slots.release()

        receiver = asyncio.create_task(receive())
        for seq, batch in batches:
            await slots.acquire()
            await ws.send(orjson.dumps({"type": "events", "session-id": session_id, "seq": seq,
                                        "events": batch}).decode())
        await receiver


async def event_per_line(url: str, session_id: str, lines: list[str], window: int = 1000) -> None:
    """The old protocol's pattern: `init`, then one `event` frame per line, pipelined."""
    async with connect(url + UPLOAD, max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "init", "session-id": session_id, "events": []}).decode())
        slots = asyncio.Semaphore(window)

        async def receive():
            for _ in range(len(lines) + 1):
                reply = orjson.loads(await ws.recv())
                assert reply["type"] == "ack", reply
                slots.release()

        await slots.acquire()
        receiver = asyncio.create_task(receive())
        for line in lines:
            await slots.acquire()
            await ws.send(orjson.dumps({"type": "event", "session-id": session_id, "event": line}).decode())
        await receiver
