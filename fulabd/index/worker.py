"""
The index worker: a child process of the daemon that brings the search index up to date from the session files.

It runs apart from the daemon so that indexing never holds the reactor's interpreter lock, and at a lower
CPU priority so that it never takes the core from the acks: a busy daemon indexes later, not slower.  The
session files are the truth.  The daemon only says which sessions changed and how many durable lines,
bytes and PARs each has now; the worker reads what it has not indexed from the files themselves.  The same
reading indexes a store at start-up, rebuilds a deleted or damaged index and picks up local files, which may
be rewritten in place.

Its standard input carries the daemon's news, one JSON object a line:
    {"op": "session", "key", "session-id", "listing-id", "source", "project", "lines", "bytes", "pars"}
    {"op": "forget", "key"}      the session's files are gone
    {"op": "sync", "n"}          answered with {"heard": n} at once, and {"idle": n} once everything said
                                 before it is indexed
and its standard output the worker's, one JSON object a line: those answers, {"reset": true} (at start, and
when a damaged index was made anew: readers must reopen it), and {"log": level, "text"}.  One worker writes
at a time (a lock file beside the index).  At the end of its input the worker finishes the transaction at
hand and exits.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading

import orjson
from twisted.logger import ILogObserver, formatEvent, globalLogBeginner
from zope.interface import provider

from fulabd import edn
from fulabd.index import IndexUnusable, SessionInfo
from fulabd.index.sqlite import SqliteIndex, fingerprint
from fulabd.par_schema import sidecar_pars

READ_BYTES = 16 << 20       # read from a session file at a time
# Of lines per transaction.  A commit's checkpoint reaches the disk at once, beside the daemon's syncs: on the
# benchmark's 1 GB store, with the worker free to use either core, 16 MiB ones made a live upload's ack p99
# 0.9 to 1.8 times that without indexing in six runs, 4 MiB ones 1.09 to 1.13 in four, indexing as fast.
BATCH_BYTES = 4 << 20
PROGRESS_SECONDS = 5.0      # between progress lines in the log while catching up
HEAD_SECONDS = 10.0         # between checks that a session's first line is still the one indexed
RETRY_SECONDS = 5.0         # the pause after a failed write
LOCK_NAME = "writer.lock"   # held by the one worker that writes the index


def read_lines(path: str, offset: int, count: int, until: int):
    """Lists of the complete lines of `path` from byte `offset`: at most `count` lines, none past byte `until`."""
    with open(path, "rb") as f:
        f.seek(offset)
        pending, consumed = b"", offset
        while count > 0 and consumed + len(pending) < until:
            data = f.read(min(READ_BYTES, until - consumed - len(pending)))
            if not data:
                return
            pending += data
            cut = pending.rfind(b"\n")
            if cut < 0:
                continue  # one line longer than a read
            lines = pending[:cut].split(b"\n")[:count]
            used = sum(len(line) + 1 for line in lines)
            pending, consumed, count = pending[used:], consumed + used, count - len(lines)
            yield lines


def par_path_of(key: str) -> str:
    """The PAR sidecar beside a session file (uploaded or local)."""
    return key[:-len(".jsonl")] + ".par.edn"


def read_pars(par_path: str) -> list[dict]:
    """The PARs of a sidecar; an unreadable one is a `ValueError` that says so."""
    try:
        with open(par_path, "rb") as f:
            pars = edn.loads(f.read())
    except FileNotFoundError:
        return []
    except ValueError as e:  # not EDN, or not UTF-8
        raise ValueError(f"its PAR sidecar {par_path} cannot be read ({e})") from None
    return sidecar_pars(pars)


def first_line(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.readline().rstrip(b"\n")


class Target:
    """A session as the daemon last described it: who it is and how much of it is durable."""

    __slots__ = ("info", "lines", "bytes", "pars")

    def __init__(self, message: dict):
        self.info = SessionInfo(message["key"], message["session-id"], message["listing-id"],
                                message.get("source"), message.get("project"))
        self.lines, self.bytes, self.pars = message["lines"], message["bytes"], message["pars"]


class Worker:
    """Indexes what the daemon says changed, a fair share of each session per transaction."""

    def __init__(self, index, say, clock):
        """`say(dict)` reports to the daemon; `clock()` is the time in seconds (for the progress log)."""
        self.index = index
        self.say = say
        self.clock = clock
        self._news = threading.Condition()
        self._pending: dict[str, Target | None] = {}  # key -> what to index (None: forget it), oldest first
        self._backlog: dict[str, Target | None] = {}  # what earlier steps left: after the news, in turns
        self._known: dict[str, Target] = {}           # every live session's latest target: to rebuild from
        self._sync: int | None = None     # the last sync told, not answered yet
        self._ended = False
        self._heads: dict[str, float] = {}  # key -> when its first line was last checked
        self._read = [0, 0, 0.0, 0.0]  # bytes and sessions read from files, since when, last logged

    # -- news from the daemon (any thread) --------------------------------------------

    def told(self, message: dict) -> None:
        with self._news:
            op = message.get("op")
            if op == "session":
                self._pending[message["key"]] = Target(message)
            elif op == "forget":
                self._pending[message["key"]] = None
            elif op == "sync":
                self._sync = message["n"]
                self.say({"heard": message["n"]})  # the daemon sends more news once this one is read
            self._news.notify()

    def end(self) -> None:
        with self._news:
            self._ended = True
            self._news.notify()

    # -- the work ------------------------------------------------------------------

    def run(self) -> None:
        self._forget_missing()
        while self.step(wait=True):
            pass
        self.index.close()

    def step(self, wait: bool = False) -> bool:
        """Index a transaction's worth of the news (first waiting for some, with `wait`); False once ended.

        A sync is answered by the step that leaves nothing behind of what was told before it."""
        with self._news:
            if wait:
                self._news.wait_for(lambda: self._pending or self._backlog or self._sync is not None
                                    or self._ended)
            if self._ended:
                return False
            work = {**self._pending, **{key: target for key, target in self._backlog.items()
                                        if key not in self._pending}}
            self._pending, self._backlog = {}, {}
            sync = self._sync
        try:
            left = self._index(work) if work else {}
        except IndexUnusable as e:
            self.say({"log": "error", "text": f"the search index is damaged ({e}); rebuilding it from the "
                                              "session files"})
            self._reset()
            left = {**self._known, **work}
        except Exception as e:
            self.say({"log": "error", "text": f"could not update the search index ({e!r}); retrying from "
                                              f"the session files in {RETRY_SECONDS:g} s"})
            with self._news:
                self._news.wait_for(lambda: self._ended, RETRY_SECONDS if wait else 0)
            left = work
        self._backlog = left  # news that arrived meanwhile goes first, and is newer
        if sync is not None and not left:
            with self._news:
                if self._sync == sync:
                    self._sync = None
            self._log_read("caught up")
            self.say({"idle": sync})
        return True

    def _index(self, work: dict) -> dict:
        """One transaction's worth of `work`; returns what is left of it, in the order to go on with: those
        not reached yet first, then those that had their share (so a long backfill takes turns)."""
        budget = BATCH_BYTES
        not_reached, unfinished = {}, {}
        with self.index.batch():
            for key, target in work.items():
                if budget <= 0:
                    not_reached[key] = target
                elif target is None:
                    self._known.pop(key, None)
                    self.index.forget(key)
                else:
                    self._known[key] = target
                    try:
                        done, more = self._catch_up(target, budget)
                    except (OSError, ValueError) as e:  # this session's files, not the index: the others go on
                        self.say({"log": "warn", "text": f"search index: could not index {key}: {e}; it is "
                                                         "tried again when it changes"})
                        continue
                    budget -= done
                    if more:
                        unfinished[key] = target
        return {**not_reached, **unfinished}

    def _catch_up(self, target: Target, budget: int) -> tuple[int, bool]:
        """Index up to about `budget` bytes of what the session's files hold beyond the index; a rewritten
        file is indexed afresh.  Returns the bytes read and whether more is left."""
        info = target.info
        progress = self.index.progress(info.key)
        try:
            if target.lines < progress.lines or target.bytes < progress.bytes or not self._same_head(info.key,
                                                                                                      progress):
                self.index.forget(info.key)
                self.say({"log": "info", "text": f"search index: {info.key} was rewritten; indexing it afresh"})
                progress = self.index.progress(info.key)
            done = 0
            if target.lines > progress.lines:
                done = self._read_file(info, progress, target, budget)
                progress = self.index.progress(info.key)
            if progress.pars < target.pars:
                for index, par in enumerate(read_pars(par_path_of(info.key))[progress.pars:], progress.pars):
                    self.index.add_par(info, index, par)
            return done, self.index.progress(info.key).lines < target.lines
        except FileNotFoundError:
            return 0, False  # deleted meanwhile: the daemon's sweep says "forget"

    def _same_head(self, path: str, progress) -> bool:
        """Whether the file still starts with the line indexed first (a local file may be rewritten in place);
        checked at most every HEAD_SECONDS."""
        if progress.lines == 0 or progress.head is None:
            return True
        now = self.clock()
        if now - self._heads.get(path, float("-inf")) < HEAD_SECONDS:
            return True
        self._heads[path] = now
        return fingerprint(first_line(path)) == progress.head

    def _read_file(self, info: SessionInfo, progress, target: Target, budget: int) -> int:
        if not self._read[0]:
            self._read[2] = self._read[3] = self.clock()
        self._read[1] += 1
        done = 0
        for lines in read_lines(info.key, progress.bytes, target.lines - progress.lines, target.bytes):
            self.index.add_lines(info, self.index.progress(info.key).lines, lines)
            done += sum(len(line) + 1 for line in lines)
            if done >= budget:
                break
        self._read[0] += done
        if self.clock() - self._read[3] >= PROGRESS_SECONDS:
            self._read[3] = self.clock()
            self._log_read("indexing")
        return done

    def _log_read(self, what: str) -> None:
        done, sessions, started, _ = self._read
        if not done:
            return
        seconds = max(self.clock() - started, 1e-3)
        self.say({"log": "info", "text": f"search index: {what}: {done / 2**20:.1f} MB from {sessions} session "
                                         f"files in {seconds:.1f} s ({done / 2**20 / seconds:.1f} MB/s)"})
        if what == "caught up":
            self._read = [0, 0, 0.0, 0.0]

    def _forget_missing(self) -> None:
        """Sessions whose files were deleted while the daemon was down are not searchable any more."""
        try:
            gone = [key for key in self.index.keys() if not os.path.exists(key)]
            if gone:
                with self.index.batch():
                    for key in gone:
                        self.index.forget(key)
                self.say({"log": "info", "text": f"search index: forgot {len(gone)} sessions whose files are "
                                                 "gone"})
        except IndexUnusable as e:
            self.say({"log": "error", "text": f"the search index is damaged ({e}); rebuilding it"})
            self._reset()

    def _reset(self) -> None:
        self.index.reset()
        self.say({"reset": True})


def yield_to_the_daemon() -> None:
    """Run only on CPU the daemon leaves: indexing may lag, but takes no CPU from an ack (it still shares the disk).

    On Linux the worker is `SCHED_IDLE` (which also puts the disk requests it makes itself in the idle I/O class,
    for schedulers that have classes); elsewhere, `nice` 19.  At `nice` 10 it still took about a tenth of the
    daemon's core under load (in one pair of runs of scenario 2's load, 18 % fewer lines/s with it than without)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def main(argv: list[str]) -> int:
    """`python -m fulabd.index.worker INDEX_FOLDER`, started by the daemon (`fulabd.index.feeder`)."""
    import time

    yield_to_the_daemon()
    os.makedirs(argv[0], exist_ok=True)
    out = sys.stdout.buffer
    lock = threading.Lock()

    def say(message: dict) -> None:
        with lock:
            out.write(orjson.dumps(message) + b"\n")
            out.flush()

    @provider(ILogObserver)
    def forward(event):  # the index's own log events go to the daemon's log
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += "\n" + event["log_failure"].getTraceback()
        say({"log": event["log_level"].name, "text": text})

    globalLogBeginner.beginLoggingTo([forward], redirectStandardIO=False)
    only_writer = open(os.path.join(argv[0], LOCK_NAME), "a+b")  # held until the process ends
    try:
        fcntl.flock(only_writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a worker of a daemon that was killed still finishes its transaction
        say({"log": "info", "text": "search index: waiting for the previous index worker to finish"})
        fcntl.flock(only_writer, fcntl.LOCK_EX)
    index = SqliteIndex(argv[0])
    say({"reset": True})  # whatever this worker found or made, the daemon's readers start from it
    worker = Worker(index, say, time.monotonic)

    def listen():
        try:
            for line in sys.stdin.buffer:
                worker.told(orjson.loads(line))
        except Exception as e:
            say({"log": "error", "text": f"index worker: unreadable news from the daemon ({e!r}); stopping"})
        finally:
            worker.end()

    threading.Thread(target=listen, name="fulabd-index-news", daemon=True).start()
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
