"""
The upload wire protocol: client messages parsed into typed values, and server replies.

Nothing here touches sockets or files. Every way a message can be wrong ends in
`ProtocolError`, whose `code` is one of the documented error codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

# Error codes a client can receive, as documented in docs/protocol.md.
BAD_JSON = "bad-json"
MISSING_SESSION_ID = "missing-session-id"
UNKNOWN_TYPE = "unknown-type"
BAD_EVENT = "bad-event"
BAD_MESSAGE = "bad-message"
TOO_LARGE = "too-large"
CONFLICT = "conflict"
GAP = "gap"
INVALID_PATH = "invalid-path"
STORAGE_FAILED = "storage-failed"
STORAGE_FULL = "storage-full"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
BAD_PAR = "bad-par"
UNKNOWN_SESSION = "unknown-session"

MAX_SESSION_ID_LENGTH = 1024

SESSION_META_KEYS = ("project", "source", "originator", "cwd", "remote-source", "parent-session-id")
MAX_META_BYTES = 64 * 1024  # of one of them as JSON
MAX_DEPTH = 32  # levels of lists and maps in metadata and PARs (their EDN sidecars' writer recurses)


class ProtocolError(Exception):
    """A message that is refused; the connection stays open."""

    def __init__(self, code: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra

    def reply(self, session_id: str | None = None) -> dict:
        message = {"type": "error", "err": self.code, "detail": self.detail}
        if session_id is not None:
            message["session-id"] = session_id
        message.update(self.extra)
        return message


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Resume:
    session_id: str


@dataclass(frozen=True)
class Append:
    """Lines for a session: `init`, `event` and `events` all become this.

    `seq` is the 0-based index of the first line, or None for an old-style
    `event` that appends at the end.  `meta` is set only for `init`.
    """

    kind: str
    session_id: str | None
    seq: int | None
    lines: list[bytes]
    meta: dict | None = None


@dataclass(frozen=True)
class Par:
    session_id: str | None
    par: dict = field(default_factory=dict)


def decode(payload: bytes | str) -> dict:
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(BAD_JSON, f"message is not valid JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_JSON, "message must be a JSON object with a \"type\" field")
    return message


def parse_message(message: dict):
    """A decoded client message as Ping, Resume, Append or Par."""
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind == "resume":
        session_id = session_id_of(message)
        if session_id is None:
            raise ProtocolError(MISSING_SESSION_ID, "resume needs a \"session-id\"")
        return Resume(session_id)
    if kind == "init":
        events = message.get("events", [])
        if not isinstance(events, list):
            raise ProtocolError(BAD_EVENT, "\"events\" must be a list of lines")
        return Append("init", session_id_of(message), 0, encode_lines(events), session_meta_of(message))
    if kind == "event":
        if "event" not in message:
            raise ProtocolError(BAD_EVENT, "an event message needs an \"event\" field")
        return Append("event", session_id_of(message), seq_of(message, required=False),
                      encode_lines([message["event"]]))
    if kind == "events":
        events = message.get("events")
        if not isinstance(events, list):
            raise ProtocolError(BAD_EVENT, "\"events\" must be a list of lines")
        return Append("events", session_id_of(message), seq_of(message, required=True),
                      encode_lines(events))
    if kind == "par":
        par = message.get("par")
        if not isinstance(par, dict):
            raise ProtocolError(BAD_PAR, "\"par\" must be a JSON object", field="par")
        return Par(session_id_of(message), par)
    if kind is None:
        raise ProtocolError(UNKNOWN_TYPE, "message has no \"type\"; expected init, event, events, par, resume or ping")
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r}; expected init, event, events, par, resume or ping")


SESSION_ID_KEYS = ("session-id", "session/id", "id")  # the old clients' spellings, first found wins
# No session id needs one, and in the log one would cut a line in two (or make `grep` call the log binary).
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def session_id_of(message: dict) -> str | None:
    """The session id from `session-id`, `session/id` or `id`, as the old clients send it."""
    for key in SESSION_ID_KEYS:
        value = message.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ProtocolError(MISSING_SESSION_ID, f"\"{key}\" must be a string")
        value = str(value)
        if not value:
            raise ProtocolError(MISSING_SESSION_ID, f"\"{key}\" is empty")
        if len(value) > MAX_SESSION_ID_LENGTH:
            raise ProtocolError(MISSING_SESSION_ID,
                                f"session id is {len(value)} characters; at most {MAX_SESSION_ID_LENGTH} are accepted")
        control = CONTROL_CHARACTER.search(value)
        if control:
            raise ProtocolError(MISSING_SESSION_ID, f"session id holds the control character "
                                                    f"U+{ord(control[0]):04X}; use printable characters only")
        return value
    return None


def session_meta_of(message: dict) -> dict:
    """The metadata an init brings (a null is no value): any JSON, each value at most MAX_META_BYTES as JSON
    and MAX_DEPTH levels deep, since it is kept in the session's EDN sidecar."""
    meta = {}
    for key in SESSION_META_KEYS:
        value = message.get(key)
        if value is None:
            continue
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:
            size = None
        if size is None or size > MAX_META_BYTES or deeper_than(value, MAX_DEPTH):
            raise ProtocolError(BAD_EVENT, f"\"{key}\" is too big or too deeply nested to keep (at most "
                                           f"{MAX_META_BYTES} bytes as JSON, {MAX_DEPTH} levels); send a string",
                                field=key)
        meta[key] = value
    return meta


def deeper_than(value, limit: int) -> bool:
    """Whether lists and maps nest more than `limit` levels in `value` (walked without recursion: call it on
    values whose size is bounded)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def seq_of(message: dict, required: bool) -> int | None:
    seq = message.get("seq")
    if seq is None:
        if required:
            raise ProtocolError(BAD_EVENT, "an events message needs \"seq\", the index of its first line")
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError(BAD_EVENT, "\"seq\" must be a non-negative integer")
    return seq


def json_bytes(value) -> bytes:
    """`value` as compact JSON, in bytes of its own size: what `orjson.dumps` returns keeps the 4 KiB it wrote
    into (orjson 3.13), so 333,000 `[]` events of one 1 MB message took 1.4 GB until they were freed."""
    return bytes(memoryview(orjson.dumps(value)))


def encode_lines(events: list) -> list[bytes]:
    """Each event as the bytes of one stored line (without its newline).

    A string is a raw JSONL line and is kept byte for byte; any other JSON
    value is stored as compact JSON.
    """
    lines = []
    for index, event in enumerate(events):
        if isinstance(event, str):
            if "\n" in event:
                raise ProtocolError(BAD_EVENT, f"event {index} contains a newline; send one JSONL line per event",
                                    index=index)
            try:
                lines.append(event.encode("utf-8"))
            except UnicodeEncodeError:
                raise ProtocolError(BAD_EVENT, f"event {index} is not valid UTF-8 text", index=index) from None
        else:
            try:
                lines.append(json_bytes(event))
            except orjson.JSONEncodeError as e:  # nested deeper than orjson writes (it reads deeper than that)
                raise ProtocolError(BAD_EVENT, f"event {index} cannot be stored as a JSON line ({e}); send the "
                                               "line as a string", index=index) from None
    return lines


def now_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pong(seconds: float) -> dict:
    return {"type": "pong", "at": now_iso(seconds)}


def ack(session_id: str, count: int, appended: int, dedup: bool) -> dict:
    return {"type": "ack", "session-id": session_id, "count": count, "appended": appended, "dedup": dedup}


def encode(message: dict) -> bytes:
    return orjson.dumps(message)
