"""
Scenario 7, start-up and listings at many sessions: a store of N tiny
sessions (made here, as the daemon writes them: a line, its meta with counts
and sizes, a PAR sidecar for every tenth), then the daemon's time to listen,
`/healthz` while it loads, its time to have loaded, and a listing page, the
whole listing and a `since` poll once loaded; once the summaries are up to date,
a session's summary.  N: 100,000, 2,000 with --quick.  A listing page and a
summary are measured the same way on a store of SMALL sessions beside them: they
should cost the same.
"""

from __future__ import annotations

import re
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
SUMMARIES = 20  # sessions' summaries asked, spread over the store
SMALL = 100
SUMMARIES_DONE = r"summaries of \d+ sessions are up to date \(([\d.]+) s after start-up\)"
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


def summary_times(daemon, sessions: int) -> list[float]:
    """Once the summaries are up to date: the time of SUMMARIES sessions' `/fulab/lab/sessions/<id>`."""
    daemon.wait_for_log(SUMMARIES_DONE, timeout=600)
    times = []
    for number in range(0, sessions, max(1, sessions // SUMMARIES))[:SUMMARIES]:
        seconds, code, body = timed_get(daemon.http + f"/fulab/lab/sessions/s{number:06}")
        if code != 200:
            raise RuntimeError(f"the summary of s{number:06} was answered {code}: {body[:200]!r}")
        times.append(seconds)
    return times


def small_store_costs(work: Path) -> tuple[float, float]:
    """The median listing page (limit=100) and session summary of a store of SMALL sessions."""
    root = work / "small"
    make_store(root, SMALL)
    daemon = Daemon(root).start(timeout=600)
    pin(daemon.process.pid, DAEMON_CPU)
    try:
        summaries = summary_times(daemon, SMALL)
        pages = [timed_get(daemon.http + "/fulab/lab/sessions?limit=100")[0] for _ in range(PAGES - 1)]
    finally:
        daemon.stop()
    return statistics.median(pages), statistics.median(summaries)


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
        summaries = summary_times(daemon, sessions)
        summarized = float(re.search(SUMMARIES_DONE, "\n".join(daemon.log))[1])
        steady = [timed_get(daemon.http + "/fulab/lab/sessions?limit=100")[0] for _ in range(PAGES - 1)]
    finally:
        daemon.stop()
    small_page, small_summary = small_store_costs(work)
    if listed != sessions:
        raise RuntimeError(f"the listing has {listed} sessions, not {sessions}")
    label = f"{sessions:,} sessions"
    during = [seconds for seconds, code, _ in health]
    page = statistics.median(steady)
    summary = statistics.median(summaries)
    page_what = f"{label}: a listing page (limit=100) once the summaries are up to date, median of {len(steady)}"
    summary_what = f"{label}: a session's summary (/fulab/lab/sessions/<id>), median of {len(summaries)}"
    return [
        Row(NAME, f"{label}: start to listening", listening, "s", higher_is_better=False),
        Row(NAME, f"{label}: start to store loaded", loaded, "s", higher_is_better=False),
        Row(NAME, f"{label}: slowest /healthz while loading ({len(health)} asked)", max(during, default=0), "s",
            higher_is_better=False, extra={"answers": sorted({f"{code} {text}" for _, code, text in health})[:5]}),
        Row(NAME, f"{label}: the first listing page once loaded (limit=100)", pages[0][0], "s",
            higher_is_better=False),
        Row(NAME, f"{label}: a listing page (limit=100), median of the {PAGES - 1} after it (the summaries "
                  "still catching up)", statistics.median(seconds for seconds, _, _ in pages[1:]), "s",
            higher_is_better=False),
        Row(NAME, f"{label}: the whole listing", whole, "s", higher_is_better=False),
        Row(NAME, f"{label}: a since poll with no changes", since, "s", higher_is_better=False),
        Row(NAME, f"{label}: summaries up to date, after the store was loaded", summarized, "s",
            higher_is_better=False),
        Row(NAME, page_what, page, "s", higher_is_better=False, target=f"<= 1.5x of {SMALL} sessions'",
            met=page <= 1.5 * small_page, extra={f"vs {SMALL} sessions": page / small_page}),
        Row(NAME, f"{SMALL} sessions: a listing page (limit=100), median of {PAGES - 1}", small_page, "s",
            kind="baseline", higher_is_better=False, versus=page_what),
        Row(NAME, summary_what, summary, "s", higher_is_better=False, target=f"<= 1.5x of {SMALL} sessions'",
            met=summary <= 1.5 * small_summary, extra={f"vs {SMALL} sessions": summary / small_summary}),
        Row(NAME, f"{SMALL} sessions: a session's summary, median of {SUMMARIES}", small_summary, "s",
            kind="baseline", higher_is_better=False, versus=summary_what),
    ]
