"""
What of a session is indexed: the text a reader of the session view sees.

A stored line becomes the viewer's event (`fulabd.events.normalize`), and the
event becomes one document per readable part: user and assistant text,
reasoning, a tool call's input (command, file paths, patch), a tool's result
(its first `TOOL_RESULT_CHARS` characters), summaries, system notes and PARs.
Lines that are bookkeeping (token counts, unknown records) give none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from fulabd.events import normalize, render_par

KINDS = ("user", "assistant", "reasoning", "tool", "tool-result", "summary", "system", "par")
TOOL_RESULT_CHARS = 2000         # of each tool result: outputs can be megabytes of file dumps
TEXT_CHARS = 64 * 1024           # of any other part (the viewer's events are cut there too)
EVENT_KINDS = {"user": "user", "assistant": "assistant", "reasoning": "reasoning", "tool_use": "tool",
               "tool_result": "tool-result", "summary": "summary", "system": "system", "par": "par"}


@dataclass(frozen=True)
class Document:
    line: int | None
    kind: str
    timestamp: str | None
    seconds: float | None      # the timestamp as seconds since the epoch, for ordering and since/until
    text: str
    opening: bool = False      # a prompt the user typed (not injected context): what a title is made of


def unmarked(text: str) -> str:
    """`text` without the two characters the index reserves for marking matches in snippets."""
    if "\x02" in text or "\x03" in text:
        return text.replace("\x02", " ").replace("\x03", " ")
    return text


def seconds_of(timestamp) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("z", "Z")).timestamp()
    except ValueError:
        return None


def line_documents(raw: bytes, index: int) -> list[Document]:
    """The documents of line `index`: none for bookkeeping lines."""
    event = normalize(raw, index)
    if event is None or event.get("type") == "raw":
        return []
    timestamp = event.get("timestamp")
    seconds = seconds_of(timestamp)
    documents = []
    for part in event.get("blocks") or [event]:
        kind = EVENT_KINDS.get(part.get("type"))
        if event.get("type") == "summary":
            kind = "summary"
        text = _part_text(part, kind) if kind else ""
        if text.strip():
            opening = (kind == "user" and not any(event.get(flag) for flag in ("injected", "meta", "sidechain"))
                       and not text.lstrip().startswith(("<", "[image]")))
            documents.append(Document(index, kind, timestamp, seconds, unmarked(text), opening))
    return documents


def _part_text(part: dict, kind: str) -> str:
    if kind == "tool":
        name = part.get("tool-name")
        return "\n".join(filter(None, [name if isinstance(name, str) else None, *_strings(part.get("input"))]))[
            :TEXT_CHARS]
    if kind == "tool-result":
        content = part.get("content")
        return (content if isinstance(content, str) else "\n".join(_strings(content)))[:TOOL_RESULT_CHARS]
    text = part.get("text")
    return text[:TEXT_CHARS] if isinstance(text, str) else ""


def _strings(value) -> list[str]:
    """Every string inside a tool input (commands, paths, patches); a JSON-encoded input is decoded first."""
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return _strings(orjson.loads(value))
            except orjson.JSONDecodeError:
                pass
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def par_document(par: dict) -> Document:
    """A sidecar PAR as one document, tied to the first of its `lines` when it names them."""
    lines = par.get("lines")
    line = lines[0] if isinstance(lines, list) and lines and isinstance(lines[0], int) else None
    tags = " ".join(str(tag) for tag in par.get("tags") or [] if isinstance(tag, str))
    timestamp = par.get("timestamp") if isinstance(par.get("timestamp"), str) else None
    text = render_par(par) + ("\n" + tags if tags else "")
    return Document(line, "par", timestamp, seconds_of(timestamp), unmarked(text[:TEXT_CHARS]))
