"""
The group commit syncs the sessions of one commit concurrently, so that the
file system can fold their syncs into one journal commit (with 50 live
sessions, syncing them one after another cost 100-600 ms per commit here).
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from fulabd import edn, store
from fulabd.store import CommitJob, Root, Session, run_commit_jobs


def test_one_commits_sessions_are_synced_at_the_same_time(tmp_path, monkeypatch):
    sessions = 4
    # Each sync waits until all of them are in progress: run one after another, the first would time out.
    together = threading.Barrier(sessions, timeout=20)
    real = os.fdatasync

    def fdatasync(fd):
        together.wait()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    root = Root(str(tmp_path))
    root.open_folder()
    jobs = []
    for number in range(sessions):
        session = Session(str(tmp_path), f"s{number}", f"s{number}")
        fd = os.open(session.jsonl_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"line\n")
        jobs.append(CommitJob(root=root, session=session, fd=fd, pars=None, meta={"event-count": 1}, lines=1, size=5,
                              published_lines=[], published_pars=[], waiters=[]))
    with ThreadPoolExecutor(store.SYNC_THREADS) as syncers:
        assert run_commit_jobs(jobs, syncers) == [None] * sessions
    for job in jobs:
        os.close(job.fd)
        assert edn.loads(open(job.session.meta_path, "rb").read()) == {"event-count": 1}
    root.close_folder()
