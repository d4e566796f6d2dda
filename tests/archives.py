"""
futon3 lab archives (`lab/raw/*.json`) built from the real sample sessions, in
the keys the old exporters wrote, for the archive tests.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from fulabd import events
from tests.fixtures import real_sample_files


def conversation(path: Path) -> list[dict]:
    """The user and assistant messages with text of a sample session, in file order."""
    lines = path.read_bytes().split(b"\n")[:-1]
    normalized = (events.normalize(line, index) for index, line in enumerate(lines))
    return [event for event in normalized if event and event["type"] in ("user", "assistant") and event["text"]]


def in_time_order(path: Path) -> bool:
    """Whether the sample's messages are in timestamp order, user first on ties (so an archive keeps it)."""
    messages = conversation(path)
    return all((a["timestamp"], a["type"] != "user") <= (b["timestamp"], b["type"] != "user")
               for a, b in zip(messages, messages[1:]))


def futon3_archive(path: Path, pars: list[dict] = ()) -> dict:
    """The sample as the old lab exported it."""
    messages = conversation(path)
    session_id = path.stem
    by_role = {"user": [], "assistant": []}
    for event in messages:
        kind = by_role[event["type"]]
        kind.append({"id": f"{session_id}:{event['type'][0]}{len(kind) + 1:03d}", "timestamp": event["timestamp"],
                     "text": event["text"]})
    archive = {"lab/session-id": session_id, "lab/repo-root": "/home/joe/code/" + session_id[:8],
               "lab/timestamp-start": messages[0]["timestamp"], "lab/timestamp-end": messages[-1]["timestamp"],
               "lab/user-messages": by_role["user"], "lab/assistant-messages": by_role["assistant"],
               "lab/files-touched": ["README.md"], "lab/source": "codex" if "rollout-" in path.name else "claude",
               "lab/source-path": str(path), "lab/trace-path": None, "lab/errors": [], "lab/commands": []}
    if pars:
        archive["lab/par-events"] = list(pars)
    return archive


def write_archives(folder: Path) -> dict[str, Path]:
    """An archive of every real sample whose messages are in time order, under `folder`: id -> sample."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for path in real_sample_files():
        if in_time_order(path):
            (folder / f"{path.stem}.json").write_bytes(orjson.dumps(futon3_archive(path)))
            written[path.stem] = path
    assert len(written) >= 3, "fewer than 3 samples in time order to archive"
    return written
