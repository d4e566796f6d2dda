"""
A session as a document: `GET /fulab/lab/sessions/<id>/export?format=md|html`.

The Markdown export has the title, the metadata, a summary, each turn with its
messages and tool cards (inputs and results as fenced blocks, file edits as
`diff` fences) and the PARs at the end; the HTML export is that Markdown in
one self-contained page (`export_html`).  Bookkeeping lines (the UI folds
them) are counted, not shown.  Which line is a prompt, context or bookkeeping
is decided as the UI's render/events.js decides it.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime

import orjson
from twisted.internet import threads
from twisted.logger import Logger
from twisted.web import resource, server

from fulabd.events import PAR_QUESTIONS, normalize
from fulabd.export_html import html_document
from fulabd.web import describe

PAGE_LINES = 5000
BOOKKEEPING_SYSTEM = frozenset({"turn_duration", "stop_hook_summary", "session_start", "compact_boundary"})
CONTEXT_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<INSTRUCTIONS>",
                    "<system-reminder>", "Caveat: The messages below were generated", "# CLAUDE.md",
                    "<local-command-caveat>")
SLASH = re.compile(r"<command-name>\s*/?([^<\s]*)\s*</command-name>")
SLASH_ARGS = re.compile(r"<command-args>([\s\S]*?)</command-args>")
SALIENT = ("command", "cmd", "file_path", "notebook_path", "path", "pattern", "url", "query", "description",
           "prompt")
LABELS = {"user": "User", "assistant": "Assistant", "system": "System", "summary": "Compaction summary",
          "reasoning": "Reasoning"}


# -- reading ---------------------------------------------------------------------

def session_lines(source, session) -> list[bytes]:
    """Every line of the session, read page by page through its catalog source."""
    lines: list[bytes] = []
    while page := source.read_lines(session, len(lines), PAGE_LINES):
        lines += page
    return lines


def normalized(lines: list[bytes]) -> list[dict]:
    return [event for index, raw in enumerate(lines) if (event := normalize(raw, index)) is not None]


def blocks(event: dict) -> list[dict]:
    return event["blocks"] if len(event.get("blocks") or ()) > 1 else [event]


def is_bookkeeping(event: dict) -> bool:
    if event["type"] == "raw":
        return not re.search("error|abort", str(event.get("kind") or ""), re.I)
    return event["type"] == "system" and event.get("kind") in BOOKKEEPING_SYSTEM


def is_context_text(text) -> bool:
    return str(text or "").lstrip().startswith(CONTEXT_PREFIXES)


def is_context(event: dict) -> bool:
    """A line that is all context (as the UI's render/events.js decides)."""
    if event["type"] != "user" or any(block["type"] != "user" for block in blocks(event)):
        return False
    if event.get("injected"):
        return True
    if SLASH.search(event.get("text") or ""):
        return False
    return bool(event.get("meta")) or all(is_context_text(block.get("text")) for block in blocks(event))


def parsed(value):
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def salient(tool_input) -> str:
    value = parsed(tool_input)
    if isinstance(value, dict):
        for key in SALIENT:
            part = value.get(key)
            if isinstance(part, str) and part:
                return part
            if isinstance(part, list) and part:
                return " ".join(str(item) for item in part)
        return orjson.dumps(value).decode()
    return "" if value is None else str(value)


def failed(result: dict) -> bool:
    if result.get("is-error"):
        return True
    value = parsed(result.get("content") or "")
    if isinstance(value, dict) and isinstance(value.get("metadata"), dict):
        code = value["metadata"].get("exit_code")
        return isinstance(code, int) and code != 0
    match = re.search(r"^Exit code: (\d+)", str(result.get("content") or "")[:400], re.M)
    return bool(match) and match[1] != "0"


def result_text(result: dict) -> str:
    value = parsed(result.get("content") or "")
    if isinstance(value, dict) and isinstance(value.get("output"), str):
        return value["output"]
    return str(result.get("content") or "")


# -- diffs -----------------------------------------------------------------------

def unified(path: str, old: str, new: str) -> str:
    lines = difflib.unified_diff((old or "").splitlines(), (new or "").splitlines(),
                                 f"a/{path}" if old else "/dev/null", f"b/{path}", lineterm="")
    return "\n".join(lines)


def patch_diff(patch: str) -> str:
    """A Codex apply_patch text as unified-diff lines (headers per file, hunks as they are)."""
    out = []
    for line in patch.splitlines():
        header = re.match(r"^\*\*\* (Add|Update|Delete) File: (.*)$", line)
        if header:
            kind, path = header[1], header[2].strip()
            out += [f"--- {'/dev/null' if kind == 'Add' else 'a/' + path}",
                    f"+++ {'/dev/null' if kind == 'Delete' else 'b/' + path}"]
        elif line.startswith("*** "):
            continue
        else:
            out.append(line)
    return "\n".join(out)


def tool_diff(name: str, tool_input) -> str | None:
    """The unified diff a file-editing tool call makes, or None."""
    value = parsed(tool_input)
    if isinstance(value, dict):
        path = str(value.get("file_path") or value.get("notebook_path") or value.get("path") or "")
        if name == "Edit" and isinstance(value.get("old_string"), str):
            return unified(path, value["old_string"], str(value.get("new_string") or ""))
        if name == "MultiEdit" and isinstance(value.get("edits"), list):
            return "\n".join(unified(path, str(edit.get("old_string") or ""), str(edit.get("new_string") or ""))
                             for edit in value["edits"] if isinstance(edit, dict))
        if name == "Write" and isinstance(value.get("content"), str):
            return unified(path, "", value["content"])
        if name == "NotebookEdit":
            return unified(path, "", str(value.get("new_source") or ""))
        candidates = [value.get("input"), value.get("patch")] + (
            value["command"] if isinstance(value.get("command"), list) else [value.get("command")])
    else:
        candidates = [value]
    for candidate in candidates:
        if isinstance(candidate, str) and "*** Begin Patch" in candidate:
            return patch_diff(candidate[candidate.index("*** Begin Patch"):])
    return None


# -- Markdown ----------------------------------------------------------------------

def fence(text: str, info: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def when(timestamp) -> str:
    try:
        return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return ""


def seconds_between(start, end) -> float | None:
    try:
        return (datetime.fromisoformat(str(end).replace("Z", "+00:00"))
                - datetime.fromisoformat(str(start).replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return None


def took(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def tool_card(call: dict, timestamp, result: tuple | None) -> str:
    name = str(call.get("tool-name") or "tool")
    argument = salient(call.get("input")).splitlines()[0][:160] if salient(call.get("input")) else ""
    status = "no result yet"
    if result is not None:
        status = "error" if failed(result[0]) else "ok"
        duration = took(seconds_between(timestamp, result[1]))
        status += f", {duration}" if duration else ""
    parts = [f"**Tool {name}** `{argument.replace('`', chr(39))}` ({status})" if argument
             else f"**Tool {name}** ({status})"]
    diff = tool_diff(name, call.get("input"))
    if diff:
        parts.append(fence(diff, "diff"))
    else:
        value = parsed(call.get("input"))
        parts.append(fence(value if isinstance(value, str) else orjson.dumps(
            value, option=orjson.OPT_INDENT_2).decode(), "json" if not isinstance(value, str) else "text"))
    if result is not None:
        parts.append("Result:\n\n" + fence(result_text(result[0]), "text"))
    return "\n\n".join(parts)


def context_block(event: dict, text: str) -> str:
    return f"*context* · {when(event.get('timestamp'))}\n\n" + fence(text, "text")


def message(event: dict, block: dict) -> str:
    text = str(block.get("text") or "")
    if block["type"] == "user" and is_context_text(text):
        return context_block(event, text)
    slash = SLASH.search(text) if block["type"] == "user" else None
    if slash:
        args = SLASH_ARGS.search(text)
        text = "`/" + slash[1] + (" " + args[1].strip() if args and args[1].strip() else "") + "`"
    label = LABELS.get(block["type"], block["type"])
    if event.get("sidechain"):
        label += " (sub-agent)"
    return f"**{label}** · {when(event.get('timestamp'))}\n\n{text}"


def markdown(session, entry: dict, events: list[dict], pars: list[dict]) -> str:
    """The Markdown document of a session: `entry` is its listing entry (`fulabd.web.describe`)."""
    results = {}
    for event in events:
        for block in blocks(event):
            if block["type"] == "tool_result" and block.get("call-id"):
                results.setdefault(block["call-id"], (block, event.get("timestamp")))
    calls = {block.get("call-id") for event in events for block in blocks(event) if block["type"] == "tool_use"}
    stamps = [event["timestamp"] for event in events if event.get("timestamp")]
    summary = entry.get("summary") or {}  # the daemon's summary of the session (fulabd.summaries), when it has one
    started, ended = summary.get("started") or (stamps[0] if stamps else None), \
        summary.get("ended") or (stamps[-1] if stamps else None)
    title = summary.get("title") or (entry.get("project") or "").rstrip("/").rpartition("/")[2] or session.session_id
    tokens = summary.get("tokens")
    out = [f"# {title}", ""]
    meta = [("session", session.session_id), ("source", entry.get("source")), ("originator", entry.get("originator")),
            ("folder", entry.get("cwd") or entry.get("project")),
            ("started", when(started) if started else None), ("ended", when(ended) if ended else None),
            ("duration", took(seconds_between(started, ended)) if started and ended else None),
            ("models", ", ".join(summary.get("models") or []) or None),
            ("tokens", ", ".join(f"{kind} {count:,}" for kind, count in tokens.items()) if tokens else None),
            ("estimated cost", f"${summary['cost-usd']:.2f}" if summary.get("cost-usd") is not None else None),
            ("lines", str(entry.get("events"))), ("PARs", str(len(pars)))]
    out += ["| field | value |", "|---|---|"] + [f"| {key} | {str(value).replace('|', '/')} |" for key, value in meta if value]
    prompts = [event for event in events if event["type"] == "user" and not is_context(event)
               and not event.get("sidechain") and all(block["type"] == "user" for block in blocks(event))]
    uses = sum(1 for event in events for block in blocks(event) if block["type"] == "tool_use")
    quiet = sum(1 for event in events if is_bookkeeping(event))
    out += ["", "## Summary", "",
            f"{counted(len(prompts), 'prompt')}, {counted(uses, 'tool call')}, {counted(len(pars), 'PAR')}; "
            f"{counted(quiet, 'bookkeeping line')} left out."]
    out += [f"\n> {line}" for event in events if event["type"] == "summary" for line in [event.get("text", "")[:2000]]]
    turn = 0
    for event in events:
        if is_bookkeeping(event):
            continue
        if event in prompts:
            turn += 1
            out += ["", f"## Turn {turn} · {when(event.get('timestamp'))}"]
        if is_context(event):
            out += ["", *(context_block(event, str(block.get("text") or "")) for block in blocks(event))]
            continue
        for block in blocks(event):
            if block["type"] == "tool_use":
                out += ["", tool_card(block, event.get("timestamp"), results.get(block.get("call-id")))]
            elif block["type"] == "tool_result":
                if block.get("call-id") not in calls:
                    out += ["", "**Result** (of a call not in this session)", "", fence(result_text(block), "text")]
            elif block["type"] == "raw":
                out += ["", f"**{event.get('kind')}**", "", fence(orjson.dumps(event.get("data")).decode(), "json")]
            elif block["type"] == "par":
                continue
            else:
                out += ["", message(event, block)]
    out += ["", "## PARs"]
    for par in pars:
        lines = par.get("lines")
        about = f" (lines {lines[0]}–{lines[1]})" if isinstance(lines, list) and len(lines) == 2 else ""
        out += ["", f"### {par.get('title') or 'Post-action review'}{about}", ""]
        if par.get("tags"):
            out.append("Tags: " + ", ".join(str(tag) for tag in par["tags"]) + "\n")
        questions = par.get("questions") if isinstance(par.get("questions"), dict) else {}
        out += [f"**{name.capitalize()}:** {questions.get(name) or '—'}\n" for name in PAR_QUESTIONS]
    if not pars:
        out += ["", "No PARs."]
    return "\n".join(out) + "\n"


# -- the resource ----------------------------------------------------------------------

def document(chosen: bytes, session, entry: dict, lines: list[bytes], pars: list[dict]) -> bytes:
    """The export file's bytes (pure: runs in a thread)."""
    text = markdown(session, entry, normalized(lines), pars)
    return (text if chosen == b"md" else html_document(session.safe_id, text)).encode("utf-8")


def exported_entry(summaries):
    """What an export says of its session: its listing entry with the summary (`SessionExport`'s `describe`)."""
    return lambda session: describe(session, session.modified, 0.0, summaries.listing_fields)


class SessionExport(resource.Resource):
    """`/fulab/lab/sessions/<id>/export?format=md|html`: the session as a file to download.

    The lines are read in the reactor (page by page, as viewers read them); normalizing and
    rendering them, the long part for a big session, runs in a thread so the daemon keeps serving.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, source, session, describe, run_in_thread=threads.deferToThread):
        """`describe(session)` gives its listing entry; `run_in_thread(f, *args)` a Deferred of f's result."""
        super().__init__()
        self.source = source
        self.session = session
        self.describe = describe
        self.run_in_thread = run_in_thread

    def render_GET(self, request):
        chosen = (request.args.get(b"format") or [b"md"])[0]
        if chosen not in (b"md", b"html"):
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"unknown format; ask for ?format=md or ?format=html\n"
        gone = []
        request.notifyFinish().addErrback(gone.append)
        built = self.run_in_thread(document, chosen, self.session, self.describe(self.session),
                                   session_lines(self.source, self.session), self.source.pars(self.session))
        built.addCallbacks(self._send, self._failed, callbackArgs=(request, chosen, gone), errbackArgs=(request, gone))
        return server.NOT_DONE_YET

    def _send(self, body: bytes, request, chosen: bytes, gone: list):
        if gone:
            return
        if chosen == b"md":
            request.setHeader(b"content-type", b"text/markdown; charset=utf-8")
        else:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
        name = f"{self.session.safe_id}.{chosen.decode()}"
        request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.write(body)
        request.finish()

    def _failed(self, failure, request, gone: list):
        self._log.failure("exporting session {safe_id} failed", failure, safe_id=self.session.safe_id)
        if gone:
            return
        request.setResponseCode(500)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.write(b"the export failed (the daemon's log says why); try again\n")
        request.finish()
