"""
Uploader benchmarks against a real daemon on loopback (numbers, not tests).

    python bench/uploader.py latency [--lines 200] [--interval 0.05]
        a line appended on disk -> acknowledged by the server (durable), as the uploader sees the ack: p50/p99
    python bench/uploader.py backfill [--megabytes 80]
        `fulab-upload --once` of a large file derived from the samples: MB/s and lines/s
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures import REPO, Daemon, sample_files  # noqa: E402

UPLOAD = "/fulab/lab/upload/ws"


def sample_corpus() -> list[bytes]:
    return [line for sample in sample_files() for line in sample.read_bytes().split(b"\n")[:-1]]


def latency(args, work: Path):
    from twisted.internet import reactor

    from fulabd.uploader.connection import connection_service
    from fulabd.uploader.progress import Reporter
    from fulabd.uploader.uploads import Uploads
    from fulabd.uploader.watch import Watcher

    daemon = Daemon(work / "remote").start()
    session = work / "live.jsonl"
    corpus = sample_corpus()
    session.write_bytes(corpus[0] + b"\n")
    written: dict[int, float] = {}
    acked: dict[int, float] = {}

    class Timing(Reporter):
        def acked(self, sender, lines, size, count):
            now = time.monotonic()
            for index in range(count):
                acked.setdefault(index, now)

        def live(self, sender):
            super().live(sender)
            threading.Thread(target=write, daemon=True).start()

    def write():
        with open(session, "ab", buffering=0) as out:
            for number in range(1, args.lines + 1):
                line = corpus[number % len(corpus)]
                written[number] = time.monotonic()
                out.write(line + b"\n")
                time.sleep(args.interval)
        reactor.callFromThread(reactor.callLater, 2, reactor.stop)

    uploads = Uploads(reactor, Timing(quiet=True, clock=reactor), source="codex")
    service = connection_service(reactor, daemon.url + UPLOAD, uploads)
    watcher = Watcher(reactor, uploads, files=[session], use_events=not args.poll)
    reactor.callWhenRunning(watcher.startService)
    reactor.callWhenRunning(service.startService)
    reactor.run()
    daemon.stop()
    delays = sorted((acked[n] - written[n]) * 1000 for n in written if n in acked)
    missing = len(written) - len(delays)
    print(f"latency, line appended -> acked ({'polling' if args.poll else 'inotify'}), {len(delays)} lines, "
          f"one every {args.interval * 1000:.0f} ms: p50 {statistics.median(delays):.1f} ms, "
          f"p90 {delays[int(len(delays) * 0.9) - 1]:.1f} ms, p99 {delays[int(len(delays) * 0.99) - 1]:.1f} ms, "
          f"max {delays[-1]:.1f} ms"
          f"{f', {missing} not acked' if missing else ''}")


def backfill(args, work: Path):
    daemon = Daemon(work / "remote").start()
    session = work / "big.jsonl"
    corpus = sample_corpus()
    target = args.megabytes * 1_000_000
    size = lines = 0
    with open(session, "wb") as out:
        while size < target:
            line = corpus[lines % len(corpus)]
            out.write(line + b"\n")
            size += len(line) + 1
            lines += 1
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "bin" / "fulab-upload"), "--url", daemon.url + UPLOAD,
                             "--path", str(session), "--source", "claude", "--once", "--quiet"])
    elapsed = time.monotonic() - started
    uploader_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stored = next((daemon.root).glob("*.jsonl"))
    same = hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(session.read_bytes()).digest()
    daemon.stop()
    print(f"backfill, fulab-upload --once: {size / 1e6:.1f} MB, {lines:,} lines in {elapsed:.1f} s "
          f"(process start included): {size / 1e6 / elapsed:.1f} MB/s, {lines / elapsed:,.0f} lines/s; "
          f"exit {result.returncode}; server copy identical: {same}; uploader max RSS "
          f"{uploader_rss:.0f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    late = commands.add_parser("latency")
    late.add_argument("--lines", type=int, default=200)
    late.add_argument("--interval", type=float, default=0.05)
    late.add_argument("--poll", action="store_true", help="without file events (polling fallback)")
    back = commands.add_parser("backfill")
    back.add_argument("--megabytes", type=int, default=80)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fulab-bench-") as work:
        {"latency": latency, "backfill": backfill}[args.command](args, Path(work))


if __name__ == "__main__":
    main()
