"""
What every scenario shares: a daemon on pinned cores, real-shaped session files,
memory readings, percentiles, and the shape of a result row.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fixtures import Daemon, derived_session, real_sample_files

MB = 1 << 20
DAEMON_CPU = 0


@dataclass
class Row:
    """One measured figure; `baseline` rows are what a user would use instead."""

    scenario: str
    what: str
    value: float
    unit: str
    kind: str = "fulabd"          # fulabd, baseline or context
    higher_is_better: bool = True
    target: str | None = None     # e.g. ">= 0.3x raw TCP copy"
    met: bool | None = None
    extra: dict = field(default_factory=dict)
    versus: str | None = None     # the `what` of the fulabd row this one is beside (else the scenario's first)

    def as_dict(self) -> dict:
        return asdict(self)


def pin(pid: int, cpu: int) -> None:
    """Keep `pid` on one core (daemon on core 0, clients on core 1), when there are two."""
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(pid, {cpu % os.cpu_count()})


def client_cpu() -> int:
    return DAEMON_CPU + 1


def start_daemon(root: Path, *args: str, pin_worker: bool = True) -> Daemon:
    """The real daemon, on core 0, with its store at `root`: every thread of it, and (with `pin_worker`) its index
    worker; without, the worker may run on either core, as it does where nobody pins the daemon."""
    daemon = Daemon(root, *args).start()
    pin_tree(daemon.process.pid, DAEMON_CPU, children=pin_worker)
    return daemon


def pin_tree(pid: int, cpu: int, children: bool = True) -> None:
    """`pin` every thread of `pid` and, with `children`, of its child processes (affinity is per thread, and a
    thread or child started before the pin keeps its own)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        pin(int(task.name), cpu)
        if children:
            for child in (task / "children").read_text().split():
                pin_tree(int(child), cpu)


def rss(pid: int) -> int:
    return _status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    return _status(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux ≥ 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M)[1]) * 1024


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank `p`th percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def session_file(folder: Path, size: int, seed: int = 0) -> Path:
    """A real-shaped session of about `size` bytes (lines from ~100 B to several MB), derived from the samples."""
    return derived_session(folder / f"session-{size // MB}MB-{seed}.jsonl", size, seed=seed,
                           big_lines=max(1, size // (30 * MB)))


def read_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def varied_session(folder: Path, size: int, seed: int = 0) -> Path:
    """A session of about `size` bytes that compresses like a real one: the real samples' lines, each with the
    words of its text (strings of 40 characters or more) replaced by random words of the samples' vocabulary;
    keys, types, ids and structure are kept.

    `session_file` repeats whole sample sessions verbatim, which a compressor with a long window reduces to
    almost nothing; real transcripts repeat their keys and structure, not their text.
    """
    import random

    import orjson

    path = folder / f"varied-{size // MB}MB-{seed}.jsonl"
    if path.exists():
        return path
    rng = random.Random(seed)
    lines = [orjson.loads(line) for sample in real_sample_files() for line in sample.read_bytes().split(b"\n")
             if line]
    vocabulary = sorted({word for line in lines for text in _texts(line) for word in WORD.findall(text)})

    def vary(value):
        if isinstance(value, dict):
            return {key: vary(item) for key, item in value.items()}
        if isinstance(value, list):
            return [vary(item) for item in value]
        if isinstance(value, str) and len(value) >= 40:
            return WORD.sub(lambda _: rng.choice(vocabulary), value)
        return value

    written = 0
    with open(path, "wb") as out:
        while written < size:
            line = orjson.dumps(vary(rng.choice(lines))) + b"\n"
            out.write(line)
            written += len(line)
    return path


def _texts(value):
    """The strings of 40 characters or more in a decoded JSON value."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str) and len(value) >= 40:
        yield value


WORD = re.compile(r"\b[a-z]{3,12}\b")  # a lowercase word of text
