"""
The commit's thread side: one job per session, making what was written to
it since its last job durable (its lines, then the sidecars that changed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from fulabd import edn
from fulabd.store.layout import Root
from fulabd.store.session import Session

# Enough threads for every live session's sync to be in progress at once: a session's sync that queued behind
# others' would add their time to its ack, and concurrent fsyncs cost the disk about one journal commit.
SYNC_THREADS = 64
PAR_KEYWORD_VALUES = frozenset({"tags", "participants"})


@dataclass
class CommitJob:
    """What one session needs made durable, encoded in the thread (not the reactor).

    `pars` is the session's PAR list, of which the first `par_count` are
    written (the list only grows meanwhile, so it is not copied); `meta` is a
    copy of the metadata, with the counts that are durable once the job is done.
    """

    root: Root
    session: Session
    fd: int | None
    pars: list | None
    meta: dict | None
    lines: int
    size: int
    published_lines: list
    published_pars: list
    waiters: list
    par_count: int = 0
    par_bytes: int | None = None
    fsync_seconds: float = 0.0
    failed: Exception | None = None  # failed before it could run (its file could not be opened)


def run_commit_job(job: CommitJob) -> Exception | None:
    """Any exception, not only OSError, is the job's error: a commit must never leave its waiters hanging."""
    if job.failed is not None:
        return job.failed
    try:
        if job.fd is not None:
            started = time.perf_counter()
            os.fdatasync(job.fd)
            job.fsync_seconds = time.perf_counter() - started
        if job.pars is not None:
            data = edn.dumps(job.pars[:job.par_count], PAR_KEYWORD_VALUES)
            job.root.write_atomically(job.session.par_name, data)
            job.par_bytes = len(data)
            if job.meta is not None:
                job.meta["par-bytes"] = job.par_bytes
        if job.meta is not None:
            job.root.write_atomically(job.session.meta_name, edn.dumps(job.meta))
    except Exception as e:
        return e
    return None
