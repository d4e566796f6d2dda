"""
Which session a file is, and its metadata, from the file itself.

Codex: the `payload.id` of the first `session_meta` line (legacy rollouts: the
first line's `id`), with cwd and originator from it.  Claude: the file's uuid
(its `sessionId`), cwd from its lines; a sub-agent file
`<uuid>/subagents/agent-<id>.jsonl` is its own session `<uuid>/agent-<id>`
whose `parent-session-id` is `<uuid>`.  Otherwise: the file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
AGENT_FILE = re.compile(r"^agent-[0-9a-zA-Z]+$")
HEAD_LINES = 50
HEAD_BYTES = 8 << 20
GENERATION = "~g"


class NotReady(Exception):
    """The file does not yet hold a complete first line to tell its session from."""


@dataclass(frozen=True)
class Identity:
    session_id: str
    meta: dict = field(default_factory=dict)

    def generation(self, number: int) -> "Identity":
        """Generation `number` (2, 3, …) of this session: the content of a rewritten file."""
        if number <= 1:
            return self
        meta = dict(self.meta)
        meta.setdefault("parent-session-id", self.session_id)
        return replace(self, session_id=f"{self.session_id}{GENERATION}{number}", meta=meta)


def head_lines(path: Path) -> list[dict]:
    """The first complete lines of the file that parse as JSON objects (others as {})."""
    lines = []
    with open(path, "rb") as handle:
        data = handle.read(HEAD_BYTES)
    for raw in data.split(b"\n")[:-1][:HEAD_LINES]:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = {}
        lines.append(value if isinstance(value, dict) else {})
    return lines


def detect_source(path: Path, lines: list[dict]) -> str | None:
    if lines:
        first = lines[0]
        if first.get("type") == "session_meta" or ("id" in first and "type" not in first and "sessionId" not in first):
            return "codex"
        if any("sessionId" in line for line in lines):
            return "claude"
    parts = set(path.parts)
    if ".codex" in parts:
        return "codex"
    if ".claude" in parts:
        return "claude"
    return None


def identify(path: Path, source: str | None = None, overrides: dict | None = None) -> Identity:
    """The session a file holds.  Raises NotReady while its first line is incomplete."""
    path = Path(path)
    lines = head_lines(path)
    if not lines:
        raise NotReady(f"{path} has no complete line yet")
    source = source or detect_source(path, lines)
    if source == "codex":
        identity = codex_identity(path, lines)
    elif source == "claude":
        identity = claude_identity(path, lines)
    else:
        identity = Identity(path.stem, {})
    meta = {key: value for key, value in identity.meta.items() if value is not None}
    if source:
        meta["source"] = source
    meta.update({key: value for key, value in (overrides or {}).items() if value is not None})
    if "project" not in meta and "cwd" in meta:
        meta["project"] = meta["cwd"]
    return Identity(identity.session_id, meta)


def codex_identity(path: Path, lines: list[dict]) -> Identity:
    first = lines[0]
    if first.get("type") == "session_meta" and isinstance(first.get("payload"), dict):
        payload = first["payload"]
        if payload.get("id"):
            return Identity(str(payload["id"]), {"cwd": payload.get("cwd"), "originator": payload.get("originator")})
    if first.get("id") and "type" not in first:
        return Identity(str(first["id"]), {})
    return Identity(path.stem, {})


def claude_identity(path: Path, lines: list[dict]) -> Identity:
    cwd = next((line["cwd"] for line in lines if isinstance(line.get("cwd"), str)), None)
    meta = {"cwd": cwd}
    if path.parent.name == "subagents" and UUID.match(path.parent.parent.name):
        parent = path.parent.parent.name
        return Identity(f"{parent}/{path.stem}", meta | {"parent-session-id": parent})
    session = next((line["sessionId"] for line in lines if isinstance(line.get("sessionId"), str)), None)
    if AGENT_FILE.match(path.stem) and session and session != path.stem:
        return Identity(f"{session}/{path.stem}", meta | {"parent-session-id": session})
    if UUID.match(path.stem):
        return Identity(path.stem, meta)
    return Identity(session or path.stem, meta)
