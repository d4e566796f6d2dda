"""
Scenario 7, start-up and listings at many sessions: a store of N tiny
sessions (made here, as the daemon writes them: a line, its meta with counts
and sizes, a PAR sidecar for every tenth), then the daemon's time to listen,
`/healthz` while it loads, its time to have loaded, and a listing page, the
whole listing and a `since` poll once loaded. N: 100,000, 2,000 with --quick.
"""

from __future__ import annotations

import statistics
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from bench.common import Row, pin, DAEMON_CPU
from fulabd import edn
from tests.fixtures import STORE_LOADED, Daemon

NAME = "7 start-up and listings"
PAGES = 21  # listing pages asked once loaded: the first (the summaries may still be catching up), and 20 more
LINE = b'{"type":"user","message":{"content":"hi"}}\n'


def make_store(root: Path, sessions: int) -> None:
    root.mkdir(parents=True)
    par = edn.dumps([{"id": "par-1", "title": "t", "tags": ["a"], "timestamp": "2026-06-05T14:03:00Z"}],
                    frozenset({"tags"}))
    for number in range(sessions):
        name = f"s{number:06}"
        (root / f"{name}.jsonl").write_bytes(LINE)
        meta = {"session-id": name, "created-at": "2026-06-05T14:03:00Z", "source": "claude",
                "event-count": 1, "jsonl-bytes": len(LINE), "par-count": 0}
        if number % 10 == 0:
            (root / f"{name}.par.edn").write_bytes(par)
            meta |= {"par-count": 1, "par-bytes": len(par)}
        (root / f"{name}.meta.edn").write_bytes(edn.dumps(meta))


def timed_get(url: str) -> tuple[float, int, bytes]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=600) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    return time.perf_counter() - started, code, body


def run(work: Path, quick: bool) -> list[Row]:
    sessions = 2_000 if quick else 100_000
    root = work / "remote"
    make_store(root, sessions)
    daemon = Daemon(root)
    started = time.perf_counter()
    daemon.start(timeout=600, loaded=False)
    listening = time.perf_counter() - started
    pin(daemon.process.pid, DAEMON_CPU)
    try:
        health = []
        while not any(STORE_LOADED.search(line) for line in daemon.log):
            seconds, code, body = timed_get(daemon.http + "/healthz")
            health.append((seconds, code, body.decode().strip()))
        loaded = time.perf_counter() - started
        pages = [timed_get(daemon.http + "/fulab/lab/sessions?limit=100") for _ in range(PAGES)]
        token = orjson.loads(pages[-1][2])["token"]
        whole, _, body = timed_get(daemon.http + "/fulab/lab/sessions")
        listed = len(orjson.loads(body)["sessions"])
        since, _, _ = timed_get(daemon.http + f"/fulab/lab/sessions?since={token}")
    finally:
        daemon.stop()
    if listed != sessions:
        raise RuntimeError(f"the listing has {listed} sessions, not {sessions}")
    label = f"{sessions:,} sessions"
    during = [seconds for seconds, code, _ in health]
    return [
        Row(NAME, f"{label}: start to listening", listening, "s", higher_is_better=False),
        Row(NAME, f"{label}: start to store loaded", loaded, "s", higher_is_better=False),
        Row(NAME, f"{label}: slowest /healthz while loading ({len(health)} asked)", max(during, default=0), "s",
            higher_is_better=False, extra={"answers": sorted({f"{code} {text}" for _, code, text in health})[:5]}),
        Row(NAME, f"{label}: the first listing page once loaded (limit=100)", pages[0][0], "s",
            higher_is_better=False),
        Row(NAME, f"{label}: a listing page (limit=100), median of the {PAGES - 1} after it",
            statistics.median(seconds for seconds, _, _ in pages[1:]), "s", higher_is_better=False),
        Row(NAME, f"{label}: the whole listing", whole, "s", higher_is_better=False),
        Row(NAME, f"{label}: a since poll with no changes", since, "s", higher_is_better=False),
    ]
