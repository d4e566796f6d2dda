"""
Normalized viewer events: one per JSONL line of a Codex or Claude session, plus PARs.

`normalize(raw, index)` turns one stored line into an event dict, or returns
None for the only lines that are skipped on purpose: Codex `event_msg` lines
whose payload type is in `DUPLICATE_EVENT_MSGS` (they repeat a `response_item`
of the same turn).  Every other line yields an event; a line nobody recognises
becomes a `raw` event, never a silent drop.  Pure functions, no I/O.
"""

from __future__ import annotations

import orjson

from fulabd import formats
from fulabd.formats import codex
from fulabd.formats.common import NOT_MINE, text_of

MAX_STRING = 64 * 1024         # characters kept of any one string in an event
MAX_EVENT_BYTES = 256 * 1024   # an event encoding larger than this is clipped harder
SMALL_STRING = 2 * 1024
# An event holds at most two copies of its line's text (a first block and `blocks`), each at most twice as
# long once re-escaped, so an event from a line this short is already within both limits above.
SMALL_LINE = 16 * 1024
BULKY_FIELDS = ("data", "input", "content", "blocks", "questions", "text")  # previewed when still too large

PAR_QUESTIONS = ("intention", "happening", "perspectives", "learned", "forward")
# Re-exported: the lines the viewer skips, and how Codex roles map to event types.
DUPLICATE_EVENT_MSGS = codex.DUPLICATE_EVENT_MSGS
CODEX_ROLES = codex.ROLES


def normalize(raw: bytes, index: int) -> dict | None:
    """The viewer event for line `index` of a session, or None for a skipped duplicate."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bounded({"type": "raw", "line": index, "timestamp": None, "kind": "unparsed",
                        "text": raw.decode("utf-8", "replace")})
    if not isinstance(value, dict):
        return bounded({"type": "raw", "line": index, "timestamp": None, "kind": "non-object", "data": value})
    event = _recognise(value)
    if event is None:
        return None
    timestamp = value.get("timestamp")
    if not isinstance(timestamp, str):
        timestamp = (value.get("payload") or {}).get("timestamp") if isinstance(value.get("payload"), dict) else None
    event = {"line": index, "timestamp": timestamp if isinstance(timestamp, str) else None} | event
    return event if len(raw) <= SMALL_LINE else bounded(event)


def _recognise(line: dict) -> dict | None:
    """Whichever agent format knows the line (a line says nothing of its session's source), else a PAR or raw."""
    for agent in formats.FORMATS:
        event = agent.event(line)
        if event is not NOT_MINE:
            return event
    kind = line.get("type")
    if kind == "par":
        return par_line(line)
    return {"type": "raw", "kind": str(kind) if kind is not None else "untyped", "data": line}


# -- PARs -------------------------------------------------------------------

def render_par(par: dict) -> str:
    """A sidecar PAR's text, exactly as the old lab-ws rendered it for viewers."""
    title = par.get("title") or "Session Review"
    header = f"## PAR: {title}\n\n"
    questions = par.get("questions")
    if not isinstance(questions, dict) or not questions:
        return header
    answers = [f"**{name.capitalize()}:** {_answer(questions.get(name))}" for name in PAR_QUESTIONS]
    return header + "\n\n".join(answers)


def _answer(value) -> str:
    return "" if value is None else value if isinstance(value, str) else text_of(value)


def par_event(par: dict, index: int) -> dict:
    """The viewer event of the sidecar PAR at position `index`; one of the wrong shape (a hand-edited or old
    sidecar) is a `raw` event, so that it never stops the stream.  A PAR with a `text` and no `questions`
    (an archive's, already rendered) keeps its text."""
    tags = par.get("tags") if isinstance(par, dict) else None
    if not isinstance(par, dict) or not isinstance(tags, (list, type(None))) or not isinstance(
            par.get("title"), (str, type(None))):
        return bounded({"type": "raw", "line": None, "par-index": index, "timestamp": None, "kind": "par",
                        "data": par})
    text = par["text"] if isinstance(par.get("text"), str) and not par.get("questions") else render_par(par)
    return bounded({"type": "par", "line": None, "par-index": index, "timestamp": par.get("timestamp"),
                    "par-id": par.get("id", par.get("par-id")), "title": par.get("title"),
                    "tags": [str(tag) for tag in tags or []], "lines": par.get("lines"),
                    "questions": par.get("questions"), "text": text})


def par_line(line: dict) -> dict:
    """An inline `{"type":"par",…}` JSONL line: the old text/summary/message.content, or a sidecar-shaped PAR."""
    if "questions" in line or "title" in line:
        text = render_par(line)
    elif isinstance(line.get("text"), str):
        text = line["text"]
    elif isinstance(line.get("summary"), str):
        text = line["summary"]
    else:
        message = line.get("message")
        text = text_of(message.get("content")) if isinstance(message, dict) else ""
    tags = line.get("tags")
    return {"type": "par", "par-id": line.get("par-id", line.get("id")), "title": line.get("title"),
            "tags": [str(tag) for tag in tags] if isinstance(tags, list) else [],
            "questions": line.get("questions"), "text": text}


# -- size -------------------------------------------------------------------

def bounded(event: dict) -> dict:
    """`event`, with strings cut so that it stays small; cut events carry `"truncated": true`."""
    clipped, cut = _clip(event, MAX_STRING)
    if cut:
        clipped["truncated"] = True
    if len(orjson.dumps(clipped)) > MAX_EVENT_BYTES:
        clipped, _ = _clip(event, SMALL_STRING)
        clipped["truncated"] = True
        for key in BULKY_FIELDS:
            if key in clipped and len(orjson.dumps(clipped)) > MAX_EVENT_BYTES:
                clipped[key] = orjson.dumps(clipped[key]).decode()[:SMALL_STRING]
    return clipped


def _clip(value, limit: int):
    if isinstance(value, str):
        return (value[:limit], True) if len(value) > limit else (value, False)
    if isinstance(value, dict):
        out, cut = {}, False
        for key, item in value.items():
            out[key], was_cut = _clip(item, limit)
            cut = cut or was_cut
        return out, cut
    if isinstance(value, list):
        out, cut = [], False
        for item in value:
            clipped, was_cut = _clip(item, limit)
            out.append(clipped)
            cut = cut or was_cut
        return out, cut
    return value, False
