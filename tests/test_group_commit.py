"""
Sessions' syncs run side by side on the store's own thread pool, so that the
file system can fold them into one journal commit (with 50 live sessions,
syncing them one after another cost 100-600 ms here), and so that no
session's sync queues behind the others'.
"""

import os
import threading

from twisted.internet import task

from fulabd.store import SessionStore


def test_every_sessions_sync_is_in_progress_at_the_same_time(tmp_path, monkeypatch):
    sessions = 50
    # Each sync waits until all of them are in progress: queued behind one another, the first would time out.
    together = threading.Barrier(sessions, timeout=20)
    synced = []
    all_synced = threading.Event()
    real = os.fdatasync

    def fdatasync(fd):
        together.wait()
        real(fd)
        synced.append(fd)
        if len(synced) == sessions:
            all_synced.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store = SessionStore(str(tmp_path), clock=task.Clock())
    store.load()
    store.start_syncs()
    try:
        for number in range(sessions):
            store.append(f"s{number}", 0, [b"line"])
        assert all_synced.wait(30), f"only {len(synced)} of {sessions} syncs got past the barrier"
    finally:
        store.stop_syncs()
