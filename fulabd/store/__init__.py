"""
The session store, one module per concern:

- `layout`: safe ids, file names, and no-symlink file operations under the root;
- `session`: one session's state;
- `files`: the bounded LRU of append descriptors;
- `commit`: the per-session sync jobs run in threads;
- `recovery`: start-up (torn tails, counts from the meta, sidecars);
- `store`: `SessionStore`, the service that ties them together;
- `interface`: `Store`, what callers may use (and a second backend implements), and `StoreError`.
"""

from fulabd.store.commit import SYNC_THREADS, CommitJob, run_commit_job
from fulabd.store.interface import Store, StoredSession, StoreError
from fulabd.store.layout import READ_CHUNK, Root, count_lines, cut_torn_tail, line_ends, safe_id
from fulabd.store.session import AppendResult, Session
from fulabd.store.store import SessionStore

__all__ = ["SYNC_THREADS", "CommitJob", "run_commit_job", "Store", "StoredSession", "StoreError", "READ_CHUNK",
           "Root", "count_lines", "cut_torn_tail", "line_ends", "safe_id", "AppendResult", "Session", "SessionStore"]
