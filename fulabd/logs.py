"""
Machine-readable logs: `twistd -n --pidfile= --logger fulabd.logs.json_lines fulab …` writes
one JSON object per line on stdout: `time`, `level`, `namespace`, `text` (the
message as the text log shows it) and every structured field of the event
(`session_id`, `peer`, `err`, …), for log shippers and `jq`.
"""

from __future__ import annotations

import sys

import orjson
from twisted.logger import ILogObserver, formatEvent
from zope.interface import provider


def json_lines(out=None):
    out = out or sys.stdout

    @provider(ILogObserver)
    def observe(event: dict):
        record = {"time": event.get("log_time"), "level": event["log_level"].name if "log_level" in event else None,
                  "namespace": event.get("log_namespace"), "text": formatEvent(event)}
        record.update((key, value) for key, value in event.items()
                      if not key.startswith("log_") and isinstance(value, (str, int, float, bool, type(None))))
        if "log_failure" in event:
            record["traceback"] = event["log_failure"].getTraceback()
        out.write(orjson.dumps(record).decode() + "\n")
        out.flush()

    return observe
