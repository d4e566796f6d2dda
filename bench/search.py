"""
Scenario 8, the search index: a store derived from the real samples, with the
words of every text varied (so that it is not the same few megabytes indexed
over and over), indexed from its files by a daemon started on it, while a
live upload runs; the same live upload against the same store with
`--no-index` is the baseline for its ack p99.  The daemon is on core 0 as in
every scenario; its index worker (an idle-priority process) is measured once
free to use either core, as wherever nobody pins the daemon, and once pinned
beside it, as on a one-core server.  Then search latency over HTTP for single
words, phrases and prefixes, beside `grep -F` over the same files.
"""

from __future__ import annotations

import asyncio
import os
import http.client
import random
import re
import shutil
import statistics
import subprocess
import time
import urllib.parse
from pathlib import Path

import orjson

from bench.common import MB, Row, percentile, start_daemon
from bench.live import session as live_session
from bench.live import small_lines
from tests.fixtures import real_sample_files, sample_lines

NAME = "8 search index"
SESSION_BYTES = 10 * MB
VARIANTS = 64                 # distinct rewrites of each sample line
LIVE_SESSIONS, LIVE_RATE = 20, 100.0
QUERIES = 200                 # per kind
TEXT_LENGTH = 40              # strings at least this long are text (ids, types and timestamps are shorter)
_WORD = re.compile(r"[A-Za-z]{3,}")
_TOKEN = re.compile(r"[^\W_]+")


def varied(value, rng: random.Random):
    """`value` with every word of its texts given a number, drawn so that a few are common and most rare."""
    if isinstance(value, str):
        if len(value) < TEXT_LENGTH:
            return value
        return _WORD.sub(lambda m: f"{m.group(0)}{int(rng.expovariate(1 / 3000))}", value)
    if isinstance(value, dict):
        return {key: varied(item, rng) for key, item in value.items()}
    if isinstance(value, list):
        return [varied(item, rng) for item in value]
    return value


def build_store(root: Path, size: int, seed: int = 6) -> tuple[int, list[bytes]]:
    """Session files of about `size` bytes in all under `root`; their bytes and the distinct lines used."""
    rng = random.Random(seed)
    sessions = [[orjson.loads(line) for line in sample_lines(path)] for path in real_sample_files()]
    variants = max(1, min(VARIANTS, size // MB))
    rewrites = [[[orjson.dumps(varied(line, rng)) + b"\n" for line in lines] for lines in sessions]
                for _ in range(variants)]
    written, number = 0, 0
    root.mkdir(parents=True, exist_ok=True)
    while written < size:
        with open(root / f"indexed-{number}.jsonl", "wb") as out:
            in_file = 0
            while in_file < min(SESSION_BYTES, size - written):
                which = rng.randrange(len(sessions))
                for index in range(len(sessions[which])):
                    data = rewrites[rng.randrange(variants)][which][index]
                    out.write(data)
                    in_file += len(data)
            written += in_file
        number += 1
    return written, [line for variant in rewrites for lines in variant for line in lines]


def live_p99(url: str, seconds: float) -> tuple[float, int]:
    """Ack p99 (ms) of a live upload: LIVE_SESSIONS sessions appending small real lines at LIVE_RATE each."""
    pool, latencies, counts = small_lines(), [], [0]

    async def everyone():
        await asyncio.gather(*(live_session(url, number, LIVE_RATE, seconds, pool, latencies, counts)
                               for number in range(LIVE_SESSIONS)))

    asyncio.run(everyone())
    return percentile(latencies, 99) * 1000, counts[0]


def queries(lines: list[bytes], rng: random.Random) -> dict[str, list[str]]:
    """Single words, two-word phrases and prefixes taken from the store's own texts."""
    texts = []
    while len(texts) < QUERIES * 3:
        words = _TOKEN.findall(" ".join(text for text in strings(orjson.loads(rng.choice(lines)))
                                        if len(text) >= TEXT_LENGTH))
        if len(words) >= 2:
            texts.append(words)
    words = [rng.choice(text) for text in texts[:QUERIES]]
    phrases = []
    for text in texts[QUERIES:2 * QUERIES]:
        start = rng.randrange(len(text) - 1)
        phrases.append(f'"{text[start]} {text[start + 1]}"')
    prefixes = [f"{word[:max(3, len(word) - 3)]}*" for word in
                (rng.choice([word for word in text if len(word) >= 4] or ["line"]) for text in texts[2 * QUERIES:])]
    return {"word": words, "phrase": phrases, "prefix": prefixes}


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def search_times(port: int, qs: list[str]) -> list[float]:
    """Each query's time over one kept-alive HTTP connection, first page of 20."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for q in qs:
        started = time.perf_counter()
        connection.request("GET", "/fulab/lab/search?" + urllib.parse.urlencode({"q": q}))
        response = connection.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200, body
    connection.close()
    return times


def wait_caught_up(daemon, deadline: float) -> None:
    daemon.wait_for_log(r"search index: caught up", timeout=deadline)


def indexing_run(root: Path, seconds: float, pin_worker: bool, then=None) -> dict:
    """A daemon started on `root` with no index: the live upload's ack p99 while it indexes, and how fast it
    indexed; `then(daemon)` runs once it has caught up.  The index and the upload's sessions are removed after."""
    daemon = start_daemon(root, pin_worker=pin_worker)
    try:
        p99, live_lines = live_p99(daemon.url, seconds)
        still_indexing = not any("search index: caught up" in line for line in daemon.log)
        wait_caught_up(daemon, 3600)
        [summary] = [line for line in daemon.log if "search index: caught up" in line]
        mb, indexed_seconds = (float(x) for x in re.search(r"([\d.]+) MB from \d+ session files in ([\d.]+) s",
                                                           summary).groups())
        result = {"p99": p99, "lines": live_lines, "still indexing": still_indexing, "rate": mb / indexed_seconds,
                  "seconds": indexed_seconds,
                  "index MB": sum(path.stat().st_size for path in (root / ".index").iterdir()) / MB,
                  "then": then(daemon) if then else None}
    finally:
        daemon.stop()
    forget_run(root)
    return result


def forget_run(root: Path) -> None:
    shutil.rmtree(root / ".index", ignore_errors=True)
    for leftover in root.glob("live-*"):
        leftover.unlink()


def run(work: Path, quick: bool, size_mb: int | None = None) -> list[Row]:
    size = (size_mb or (50 if quick else 1024)) * MB
    root = work / "store"
    total, lines = build_store(root, size)
    files = sorted(str(path) for path in root.glob("indexed-*.jsonl"))
    os.sync()  # the store just written is not still being written back while an upload is measured
    seconds = 5.0 if quick else 20.0

    daemon = start_daemon(root, "--no-index")
    try:
        p99_off, _ = live_p99(daemon.url, seconds)
    finally:
        daemon.stop()
    forget_run(root)
    pinned = indexing_run(root, seconds, pin_worker=True)
    free = indexing_run(root, seconds, pin_worker=False, then=lambda daemon: {
        kind: search_times(daemon.port, qs) for kind, qs in queries(lines, random.Random(1)).items()})
    latency = free["then"]
    grep = []
    for word in queries(lines, random.Random(2))["word"][:5]:
        started = time.perf_counter()
        subprocess.run(["grep", "-F", "-c", word, *files], stdout=subprocess.DEVNULL, check=False)
        grep.append(time.perf_counter() - started)

    label = f"{total / MB:.0f} MB in {len(files)} sessions"
    live = f"({LIVE_SESSIONS} x {LIVE_RATE:g} lines/s, {seconds:g} s)"
    rows = []
    for measured, where, judged in ((free, "the worker free to use either core, as deployed", True),
                                    (pinned, "the worker pinned to the daemon's core", False)):
        rows += [
            Row(NAME, f"indexing from the files, {label}, {where}", measured["rate"], "MB/s",
                kind="fulabd" if judged else "context", target=">= 20 MB/s" if judged else None,
                met=measured["rate"] >= 20 if judged else None,
                extra={"seconds": measured["seconds"], "index MB": measured["index MB"]}),
            Row(NAME, f"live upload ack p99 while indexing {live}, {where}", measured["p99"], "ms",
                kind="fulabd" if judged else "context", higher_is_better=False,
                target="<= 1.5x with --no-index" if judged else None,
                met=measured["p99"] <= 1.5 * p99_off if judged else None,
                extra={"lines": measured["lines"], "indexing lasted the whole upload": measured["still indexing"]}),
        ]
    rows.append(Row(NAME, "live upload ack p99, same upload and store, --no-index", p99_off, "ms", kind="baseline",
                    higher_is_better=False))
    for kind, times in latency.items():
        p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
        rows += [Row(NAME, f"search p50, {kind} ({len(times)} queries over HTTP)", p50, "ms",
                     higher_is_better=False, target="< 20 ms", met=p50 < 20),
                 Row(NAME, f"search p99, {kind}", p99, "ms", higher_is_better=False, target="< 100 ms",
                     met=p99 < 100)]
    rows.append(Row(NAME, f"grep -F -c of one word over the same files (median of {len(grep)})",
                    statistics.median(grep) * 1000, "ms", kind="baseline", higher_is_better=False))
    return rows
