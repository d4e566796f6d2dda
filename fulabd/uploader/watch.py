"""
Finding session files and noticing new lines.

inotify (through watchdog) reports a write within milliseconds; a slow poll
of every tracked file's size and a periodic rescan of the folders back it up
(and replace it where file events are unavailable: then the poll runs every
`POLL_WITHOUT_EVENTS` seconds).  Events arrive on watchdog's thread and are
handed to the reactor, coalesced per file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fulabd.uploader.compressed import is_session_file, shadowed

POLL_WITH_EVENTS = 1.0
POLL_WITHOUT_EVENTS = 0.1
RESCAN = 10.0


def session_files(folder: Path):
    """Every session file under `folder`, Claude sub-agent files and compressed rollouts included
    (not a compressed one whose uncompressed form is there too)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if is_session_file(name) and not shadowed(os.path.join(root, name)):
                yield Path(root) / name


WRITE_EVENTS = frozenset({"created", "modified", "moved", "closed"})


def written_session_files(event) -> list[str]:
    """The session files a file event says were written, created or moved in.

    Opening or reading a file is an event too (inotify's IN_OPEN,
    IN_CLOSE_NOWRITE); reacting to those would make every read of a file
    trigger another read.
    """
    if event.is_directory or event.event_type not in WRITE_EVENTS:
        return []
    paths = [os.fsdecode(path) for path in (event.src_path, getattr(event, "dest_path", "")) if path]
    return [path for path in paths if is_session_file(path)]


class Watcher(Service):
    """Tracks the files given, and every session file under the folders given."""

    _log = Logger()

    def __init__(self, reactor, uploads, folders=(), files=(), active_minutes: float = 60, backfill: bool = False,
                 use_events: bool = True):
        self.reactor = reactor
        self.uploads = uploads
        self.folders = [Path(folder).expanduser().absolute() for folder in folders]
        self.files = [Path(file).expanduser().absolute() for file in files]
        self.active_seconds = active_minutes * 60
        self.backfill = backfill
        self.use_events = use_events
        self._started_at = 0.0
        self._not_ready: set[str] = set()
        self._dirty: set[str] = set()
        self._seen: dict[str, tuple | None] = {}
        self._dormant: dict[str, float] = {}
        self._observer = None
        self._poll = LoopingCall(self.poll)
        self._poll.clock = reactor
        self._rescan = LoopingCall(self.scan)
        self._rescan.clock = reactor

    def startService(self):
        super().startService()
        self._started_at = time.time()
        for file in self.files:
            self._track(str(file))
        self.scan(initial=True)
        if self._dormant:  # lines written to them while the uploader was not running wait for --backfill
            self.uploads.reporter.say(
                f"{len(self._dormant):,} session file(s) not written in the last {self.active_seconds / 60:g} "
                "minutes were not checked; to check them against the server (lines written while the uploader "
                "was not running), add --backfill", always=True)
        if self.use_events:
            self._observer = self._start_observer()
        interval = POLL_WITH_EVENTS if self._observer is not None else POLL_WITHOUT_EVENTS
        self._poll.start(interval, now=False)
        if self.folders:
            self._rescan.start(RESCAN if self._observer is not None else 1.0, now=False)

    def stopService(self):
        super().stopService()
        for loop in (self._poll, self._rescan):
            if loop.running:
                loop.stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    def _start_observer(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            self._log.warn("watchdog is not installed; polling for new lines every {interval} s",
                           interval=POLL_WITHOUT_EVENTS)
            return None
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                for path in written_session_files(event):
                    watcher.reactor.callFromThread(watcher.changed, path)

        logging.getLogger("watchdog.observers.inotify").addFilter(not_the_stop_race)
        observer = Observer()
        handler = Handler()
        try:
            for folder in self.folders:
                observer.schedule(handler, str(folder), recursive=True)
            for parent in {file.parent for file in self.files}:
                observer.schedule(handler, str(parent), recursive=False)
            observer.start()
        except OSError as e:
            self._log.warn("file events are unavailable ({error}); polling for new lines", error=e)
            return None
        return observer

    def wanted(self, path: str) -> bool:
        if self.files and Path(path) in self.files:
            return True
        return any(Path(path).is_relative_to(folder) for folder in self.folders)

    def changed(self, path: str):
        """A file event: coalesce events for the same file into one read on the next turn."""
        if path in self._dirty or not self.running:
            return
        self._dirty.add(path)
        self.reactor.callLater(0, self._flush, path)

    def _flush(self, path: str):
        self._dirty.discard(path)
        if self.running and self.wanted(path) and not shadowed(path):
            self._track(path)

    def _track(self, path: str):
        if self.uploads.track(path) is None and os.path.exists(path):
            self._not_ready.add(path)
        else:
            self._not_ready.discard(path)

    def scan(self, initial: bool = False):
        """Look for session files: at start the recent ones (all with backfill), later any new or changed one.

        Files left alone at start are remembered with their modification time,
        so one that appears later is uploaded whatever its time (a copy keeps
        its source's), and an old one only once it is written to.
        """
        tracked = self.uploads.senders
        since = self._started_at - self.active_seconds
        for folder in self.folders:
            for path in session_files(folder):
                key = str(path)
                if key in tracked or key in self._not_ready:
                    continue
                try:
                    modified = path.stat().st_mtime
                except OSError:
                    continue
                if initial and not self.backfill and modified < since:
                    self._dormant[key] = modified
                elif self._dormant.get(key) != modified:
                    self._dormant.pop(key, None)
                    self._track(key)

    def poll(self):
        """Back up file events: read any tracked file that changed, retry files without a complete line yet."""
        for path in list(self._not_ready):
            self._track(path)
        for path in set(self._seen) - set(self.uploads.senders):
            del self._seen[path]
        for path, sender in list(self.uploads.senders.items()):
            try:
                status = os.stat(path)
            except OSError:
                status = None
            signature = status and (status.st_ino, status.st_size, status.st_mtime_ns)
            if signature != self._seen.get(path):
                self._seen[path] = signature
                sender.pump()


def not_the_stop_race(record) -> bool:
    """watchdog's inotify thread, stopped while it waits for an event, logs an error as it returns (a race in
    watchdog's own stop, harmless: nothing is lost); keep it off a user's terminal at every Ctrl-C."""
    return "called when the thread is inactive" not in record.getMessage()
