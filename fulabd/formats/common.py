"""
What every agent format module shares: the identity of a file, the facts a
summary takes from one line, and the readable text of a content value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NOT_MINE = object()  # what a format's `event` answers for a line of another format
TOKEN_KINDS = ("input", "output", "cache-read", "cache-write")
# Priced apart, counted inside cache-write: Claude's one-hour cache writes cost more than five-minute ones.
CACHE_WRITE_1H = "cache-write-1h"


@dataclass(frozen=True)
class FileIdentity:
    """Who a session file is: its session id and the metadata a listing shows."""

    session_id: str
    cwd: str | None = None
    originator: str | None = None
    parent_session_id: str | None = None
    project: str | None = None

    def meta(self) -> dict:
        """The metadata as the upload `init` message and the listings spell it (no None values)."""
        values = {"cwd": self.cwd, "originator": self.originator, "parent-session-id": self.parent_session_id,
                  "project": self.project or self.cwd}
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class Usage:
    """Token usage reported on a line.

    `key` set: one response's usage, repeated on each line of that response (the line with the
    largest output count is the final one).  `key` None: a running total for the whole session.
    """

    tokens: dict
    key: str | None = None
    model: str | None = None


@dataclass
class Facts:
    """What one line tells a summary; empty fields mean the line says nothing of that."""

    timestamp: str | None = None
    model: str | None = None            # a model that answered (Claude) or is now in use (Codex)
    prompt: str | None = None           # a real user prompt: one turn, and the title when nothing better
    title: tuple[str, str] | None = None  # (kind, text), kind one of TITLE_KINDS
    tools: list = field(default_factory=list)     # (call id, tool name, is a shell command)
    errors: int = 0                     # tool results that report a failure
    files: list = field(default_factory=list)     # paths an edit tool wrote
    launches: list = field(default_factory=list)  # call ids of sub-agent launches
    agents: list = field(default_factory=list)    # (launching call id or None, sub-agent session id)
    usage: Usage | None = None


# Title sources, best first (a Claude `custom-title` beats an `ai-title` beats a `summary` line).
TITLE_KINDS = ("custom-title", "ai-title", "summary")
TITLE_LENGTH = 120


def parse_lines(head: bytes, limit: int = -1) -> list[dict]:
    """The complete lines of a file's head (the first `limit` of them), parsed; a line that is not a JSON object
    counts as {}.  Only what is kept is split and parsed: a 1 MiB head of short lines is thousands of them."""
    values = []
    for raw in head.split(b"\n", limit)[:-1]:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = {}
        values.append(value if isinstance(value, dict) else {})
    return values


def text_of(value) -> str:
    """Readable text of a content value: strings, text blocks, summaries; images as a placeholder."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text for text in (text_of(item) for item in value) if text)
    if isinstance(value, dict):
        for key in ("text", "thinking", "content", "output"):
            if isinstance(value.get(key), (str, list)):
                return text_of(value[key])
        kind = value.get("type")
        if kind in ("image", "input_image"):
            return "[image]"
        if kind == "encrypted_content":
            return ""
        return orjson.dumps(value).decode()
    return orjson.dumps(value).decode()


def kind_of(value: dict) -> str | None:
    """A value's `type` when it is a string (a hostile line may put a list there)."""
    kind = value.get("type")
    return kind if isinstance(kind, str) else None


def count(value) -> int:
    """A token count from a usage field: a non-negative integer, anything else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def one_line_title(text: str) -> str:
    """A title: whitespace collapsed, cut to TITLE_LENGTH characters."""
    return " ".join(text.split())[:TITLE_LENGTH]
