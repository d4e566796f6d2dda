"""
Scenario 2, live ingest: 50 sessions each appending small real lines at a
steady rate, all at once; each line is sent as soon as it is due (batched
with whatever else is due on that session) and its latency runs from the
moment it was due to its durable ack, so a slow server cannot hide its
queueing (no coordinated omission).  Beside it, the disk's own fdatasync
tail measured right after (`bench.disk`), the floor an ack's latency sits on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from bench import disk
from bench.clients import UPLOAD
from bench.common import Row, cpu_seconds, percentile, start_daemon
from tests.fixtures import real_sample_files, sample_lines

NAME = "2 live ingest"
SESSIONS = 50
TICK = 0.005


def small_lines() -> list[str]:
    """Real sample lines of 100 B to 1 KB."""
    return [line for path in real_sample_files() for line in sample_lines(path) if 100 <= len(line) <= 1024]


async def session(url: str, number: int, rate: float, seconds: float, pool: list[str], latencies: list[float],
                  counts: list[int]):
    session_id = f"live-{number}"
    async with connect(url + UPLOAD, max_size=None) as ws:
        due_times: list[list[float]] = []  # per message in flight: when each of its lines was due

        async def receive():
            while True:
                try:
                    reply = orjson.loads(await ws.recv())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    return
                now = time.perf_counter()
                assert reply["type"] == "ack", reply
                for due in due_times.pop(0):
                    latencies.append(now - due)
                counts[0] += reply["appended"]

        receiver = asyncio.create_task(receive())
        start = time.perf_counter() + number * (1 / rate) / SESSIONS  # spread the sessions' phases
        sent = 0
        while True:
            now = time.perf_counter()
            if now - start >= seconds:
                break
            due = int((now - start) * rate) + 1
            if due > sent:
                batch = [pool[(number * 7919 + index) % len(pool)] for index in range(sent, due)]
                due_times.append([start + index / rate for index in range(sent, due)])
                await ws.send(orjson.dumps({"type": "events", "session-id": session_id, "seq": sent,
                                            "events": batch}).decode())
                sent = due
            await asyncio.sleep(TICK)
        while due_times:
            if receiver.done():  # the connection ended with lines unacknowledged: a failed run, not a hang
                raise RuntimeError(f"{session_id}: connection closed ({ws.close_code} {ws.close_reason!r}) with "
                                   f"{sum(map(len, due_times))} lines unacknowledged")
            await asyncio.sleep(TICK)
        receiver.cancel()


def measure(work: Path, rate: float, seconds: float, pool: list[str]) -> tuple[float, list[float], float, float]:
    """Lines/s acknowledged, each line's latency, the daemon's CPU seconds and the client's, for SESSIONS x `rate`.

    The client's share matters: on two cores it takes turns with the daemon, and its own queueing is in
    every latency it measures."""
    daemon = start_daemon(work)
    latencies: list[float] = []
    counts = [0]
    try:
        async def all_sessions():
            await asyncio.gather(*(session(daemon.url, n, rate, seconds, pool, latencies, counts)
                                   for n in range(SESSIONS)))

        started, cpu, client_cpu = time.perf_counter(), cpu_seconds(daemon.process.pid), time.process_time()
        asyncio.run(all_sessions())
        elapsed = time.perf_counter() - started
        cpu, client_cpu = cpu_seconds(daemon.process.pid) - cpu, time.process_time() - client_cpu
    finally:
        daemon.stop()
    return counts[0] / elapsed, latencies, cpu, client_cpu


def run(work: Path, quick: bool, rate: float = 500.0, lighter: float = 200.0) -> list[Row]:
    seconds = 5.0 if quick else 20.0
    pool = small_lines()
    throughput, latencies, cpu, client_cpu = measure(work / "live", rate, seconds, pool)
    light_throughput, light, light_cpu, light_client_cpu = measure(work / "light", lighter, seconds, pool)
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    syncs = disk.fdatasync_latencies(work / "disk", 2.0 if quick else 10.0)
    floor = disk.line_floor(work / "disk", 2.0 if quick else 10.0, files=SESSIONS)
    offered = f"{SESSIONS} sessions x {rate:g} lines/s offered, {seconds:g} s"
    return [
        Row(NAME, f"lines/s with durable acks ({offered})", throughput, "lines/s", target=">= 20,000",
            met=throughput >= 20_000, extra={"lines": len(latencies), "daemon cpu seconds": cpu}),
        Row(NAME, "ack latency p50 (from the moment each line was due)", p50, "ms", higher_is_better=False),
        Row(NAME, "ack latency p99", p99, "ms", higher_is_better=False, target="< 50 ms", met=p99 < 50),
        Row(NAME, "ack latency max", max(latencies, default=0) * 1000, "ms", higher_is_better=False),
        Row(NAME, "CPU seconds in the run: the daemon", cpu, "s", kind="context", higher_is_better=False),
        Row(NAME, "CPU seconds in the run: the client sending the load (one Python process, `websockets`)",
            client_cpu, "s", kind="context", higher_is_better=False),
        Row(NAME, f"lighter load, {SESSIONS} sessions x {lighter:g} lines/s offered: lines/s", light_throughput,
            "lines/s", kind="context"),
        *(Row(NAME, f"lighter load: ack latency {name}", value * 1000, "ms", kind="context", higher_is_better=False)
          for name, value in (("p50", percentile(light, 50)), ("p99", percentile(light, 99)),
                              ("max", max(light, default=0)))),
        Row(NAME, "lighter load: CPU seconds, the daemon", light_cpu, "s", kind="context", higher_is_better=False),
        Row(NAME, "lighter load: CPU seconds, the client", light_client_cpu, "s", kind="context",
            higher_is_better=False),
        *(Row(NAME, f"the disk alone, same run: fdatasync after a 200 B write, 16 threads, {SESSIONS} files, {name}",
              value * 1000, "ms", kind="context", higher_is_better=False, extra={"syncs": len(syncs)})
          for name, value in (("p50", percentile(syncs, 50)), ("p99", percentile(syncs, 99)),
                              ("max", max(syncs, default=0)))),
        *(Row(NAME, f"the disk alone, same run: a line due at a random moment on one of {SESSIONS} files synced back "
                    f"to back (an ideal daemon's ack), {name}", value * 1000, "ms", kind="context",
              higher_is_better=False, extra={"samples": len(floor)})
          for name, value in (("p50", percentile(floor, 50)), ("p99", percentile(floor, 99)),
                              ("max", max(floor, default=0)))),
        Row(NAME, "old lab: event per line, pipelined (futon3-lab.md §10; not measured here)", 1544, "lines/s",
            kind="context"),
    ]
