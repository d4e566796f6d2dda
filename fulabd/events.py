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

MAX_STRING = 64 * 1024         # characters kept of any one string in an event
MAX_EVENT_BYTES = 256 * 1024   # an event encoding larger than this is clipped harder
SMALL_STRING = 2 * 1024
# An event holds at most two copies of its line's text (a first block and `blocks`), each at most twice as
# long once re-escaped, so an event from a line this short is already within both limits above.
SMALL_LINE = 16 * 1024
BULKY_FIELDS = ("data", "input", "content", "blocks", "questions", "text")  # previewed when still too large

# Codex event_msg payload types that duplicate a response_item line: skipped.
DUPLICATE_EVENT_MSGS = frozenset({"user_message", "agent_message", "agent_reasoning"})

CODEX_TOOL_CALLS = frozenset({"function_call", "custom_tool_call", "local_shell_call", "tool_search_call",
                              "web_search_call", "image_generation_call"})
CODEX_TOOL_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output", "tool_search_output"})
CODEX_ROLES = {"user": "user", "assistant": "assistant", "developer": "system", "system": "system"}
# Text a Codex user-role message carries when the CLI injects context rather than the person typing.
INJECTED_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<INSTRUCTIONS>")
PAR_QUESTIONS = ("intention", "happening", "perspectives", "learned", "forward")


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
    kind = line.get("type")
    payload = line.get("payload")
    if kind == "response_item" and isinstance(payload, dict):
        return _codex_item(payload) or _raw(line, "response_item/" + str(payload.get("type")))
    if kind == "event_msg" and isinstance(payload, dict):
        if payload.get("type") in DUPLICATE_EVENT_MSGS:
            return None
        return _raw(line, "event_msg/" + str(payload.get("type")))
    if kind == "compacted" and isinstance(payload, dict):
        return {"type": "summary", "text": _text(payload.get("message")), "kind": "compacted"}
    if kind in ("user", "assistant") and isinstance(line.get("message"), dict):
        return _claude_message(line)
    if kind == "summary" and "summary" in line:
        return {"type": "summary", "text": _text(line.get("summary"))}
    if kind == "system":
        return {"type": "system", "text": _text(line.get("content")), "kind": line.get("subtype")}
    if kind == "par":
        return par_line(line)
    if kind in CODEX_TOOL_CALLS or kind in CODEX_TOOL_OUTPUTS or kind in ("message", "reasoning"):
        # legacy Codex rollouts: bare ResponseItems with no envelope
        return _codex_item(line) or _raw(line, str(kind))
    if "record_type" in line:
        return _raw(line, "record_type/" + str(line["record_type"]))
    return _raw(line, str(kind) if kind is not None else "untyped")


def _raw(line: dict, kind: str) -> dict:
    return {"type": "raw", "kind": kind, "data": line}


def _codex_item(item: dict) -> dict | None:
    kind = item.get("type")
    if kind == "message":
        role = item.get("role")
        text = _text(item.get("content"))
        event = {"type": CODEX_ROLES.get(role, "system"), "text": text}
        if role is not None and role not in CODEX_ROLES:
            event["role"] = role
        if role == "user" and text.lstrip().startswith(INJECTED_PREFIXES):
            event["injected"] = True
        return event
    if kind == "agent_message":
        return {"type": "assistant", "text": _text(item.get("content")), "kind": "agent_message"}
    if kind == "reasoning":
        return {"type": "reasoning", "text": _text(item.get("summary"))}
    if kind in CODEX_TOOL_CALLS:
        if "input" in item:
            tool_input = item["input"]
        elif "arguments" in item:
            tool_input = item["arguments"]
        else:
            tool_input = item.get("action")
        return {"type": "tool_use", "tool-name": item.get("name") or kind, "input": tool_input,
                "call-id": item.get("call_id")}
    if kind in CODEX_TOOL_OUTPUTS:
        output = item.get("output", item.get("tools"))
        return {"type": "tool_result", "content": _text(output) if not isinstance(output, str) else output,
                "call-id": item.get("call_id")}
    return None


def _claude_message(line: dict) -> dict:
    role = line["type"]
    content = line["message"].get("content")
    if isinstance(content, str):
        parts = [{"type": role, "text": content}]
    elif isinstance(content, list):
        parts = [_claude_block(role, block) for block in content]
    else:
        parts = [{"type": role, "text": _text(content)}]
    event = dict(parts[0]) if parts else {"type": role, "text": ""}
    if len(parts) > 1:
        event["blocks"] = parts
    if line.get("isCompactSummary"):
        event["type"] = "summary"
    for source, target in (("isSidechain", "sidechain"), ("isMeta", "meta")):
        if line.get(source):
            event[target] = True
    return event


def _claude_block(role: str, block) -> dict:
    if not isinstance(block, dict):
        return {"type": role, "text": _text(block)}
    kind = block.get("type")
    if kind == "text":
        return {"type": role, "text": _text(block.get("text"))}
    if kind == "thinking":
        return {"type": "reasoning", "text": _text(block.get("thinking"))}
    if kind == "tool_use":
        return {"type": "tool_use", "tool-name": block.get("name"), "input": block.get("input"),
                "call-id": block.get("id")}
    if kind == "tool_result":
        part = {"type": "tool_result", "content": _text(block.get("content")), "call-id": block.get("tool_use_id")}
        if block.get("is_error"):
            part["is-error"] = True
        return part
    return {"type": role, "text": _text(block)}


def _text(value) -> str:
    """Readable text of a content value: strings, text blocks, summaries; images as a placeholder."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text for text in (_text(item) for item in value) if text)
    if isinstance(value, dict):
        for key in ("text", "thinking", "content", "output"):
            if isinstance(value.get(key), (str, list)):
                return _text(value[key])
        kind = value.get("type")
        if kind in ("image", "input_image"):
            return "[image]"
        if kind == "encrypted_content":
            return ""
        return orjson.dumps(value).decode()
    return orjson.dumps(value).decode()


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
    return "" if value is None else value if isinstance(value, str) else _text(value)


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
        text = _text(message.get("content")) if isinstance(message, dict) else ""
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
