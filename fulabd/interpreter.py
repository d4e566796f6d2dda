"""
How the daemon's interpreter is set up to keep acks prompt.

Threads: the daemon's threads (the store's start-up load, summaries read from
files, searches) hold the interpreter lock while they parse; the reactor, which
gives it up at every system call, then waits up to a switch interval to get it
back.  That wait is kept short: a 2 ms sleep plus 5 socket round trips beside a
busy thread overran by p99 89 ms at Python's default 5 ms, and by 5.9 ms at 0.5 ms.

Garbage collection: every upload message makes a few dozen objects that live
until its sync is back (Deferreds, closures, the lines).  At Python's default
threshold (a young collection every 700 allocations) they are caught alive,
promoted, and then walked again by full collections: under scenario 2's load
of the benchmark, 12 full collections took 1.1 s of 6 s.  A young generation
of 100,000 objects lets them die young, and the daemon took 20 % more lines/s.
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the interpreter lock while another waits
YOUNG_OBJECTS = 100_000   # allocations between two collections of the youngest generation


def tune() -> None:
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_OBJECTS), *older)
