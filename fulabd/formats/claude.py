"""
Claude Code sessions: `~/.claude/projects/<encoded-cwd>/<uuid>.jsonl`, one line
per content block, plus metadata lines (session-formats.md §2).
"""

from __future__ import annotations

import re
from pathlib import PurePath

from fulabd.formats.common import (
    CACHE_WRITE_1H, NOT_MINE, UUID, Facts, FileIdentity, Usage, count, kind_of, one_line_title, text_of,
)

AGENT_FILE = re.compile(r"^agent-[0-9a-zA-Z]+$")
EDIT_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}
SUBAGENT_TOOLS = frozenset({"Task", "Agent"})
NO_MODEL = "<synthetic>"  # what Claude Code writes on messages it made up itself (API errors)
# A user line starting so is context Claude Code added, or a command's output, not something the person typed.
INJECTED_PREFIXES = ("<local-command-stdout>", "<local-command-stderr>", "<system-reminder>", "<bash-stdout>",
                     "<bash-stderr>", "<user-prompt-submit-hook>", "Caveat: The messages below were generated",
                     "[Request interrupted by user", "This session is being continued from a previous conversation")
COMMAND_NAME = re.compile(r"<command-name>\s*(.*?)\s*</command-name>", re.S)
COMMAND_ARGS = re.compile(r"<command-args>(.*?)</command-args>", re.S)
TITLE_FIELDS = {"custom-title": "customTitle", "ai-title": "aiTitle", "summary": "summary"}


class ClaudeFormat:
    name = "claude"

    # -- detection and identity ------------------------------------------------

    def claims(self, lines: list[dict]) -> bool:
        return any("sessionId" in line for line in lines)

    def claims_path(self, path: PurePath) -> bool:
        return ".claude" in path.parts

    def identity(self, path: PurePath, lines: list[dict]) -> FileIdentity:
        """The file's uuid; a sub-agent file is `<parent uuid>/agent-<id>` with that parent."""
        cwd = next((line["cwd"] for line in lines if isinstance(line.get("cwd"), str)), None)
        stem = path.name.removesuffix(".jsonl")
        if path.parent.name == "subagents" and UUID.fullmatch(path.parent.parent.name):
            parent = path.parent.parent.name
            return FileIdentity(f"{parent}/{stem}", cwd=cwd, parent_session_id=parent)
        session = next((line["sessionId"] for line in lines if isinstance(line.get("sessionId"), str)), None)
        if AGENT_FILE.match(stem) and session and session != stem:
            return FileIdentity(f"{session}/{stem}", cwd=cwd, parent_session_id=session)
        if UUID.fullmatch(stem):
            return FileIdentity(stem, cwd=cwd)
        return FileIdentity(session or stem, cwd=cwd)

    # -- the viewer's events ---------------------------------------------------

    def event(self, line: dict):
        """The viewer event of a Claude line (without `line`/`timestamp`), or NOT_MINE."""
        kind = kind_of(line)
        if kind in ("user", "assistant") and isinstance(line.get("message"), dict):
            return _message_event(line)
        if kind == "summary" and "summary" in line:
            return {"type": "summary", "text": text_of(line.get("summary"))}
        if kind == "system":
            return {"type": "system", "text": text_of(line.get("content")), "kind": line.get("subtype")}
        return NOT_MINE

    # -- what a summary needs ----------------------------------------------------

    def facts(self, line: dict) -> Facts:
        timestamp = line.get("timestamp")
        facts = Facts(timestamp=timestamp if isinstance(timestamp, str) else None)
        kind = kind_of(line)
        message = line.get("message")
        if kind in TITLE_FIELDS and isinstance(line.get(TITLE_FIELDS[kind]), str):
            facts.title = (kind, one_line_title(line[TITLE_FIELDS[kind]]))
        elif kind == "assistant" and isinstance(message, dict):
            _assistant_facts(line, message, facts)
        elif kind == "user" and isinstance(message, dict):
            _user_facts(line, message, facts)
        return facts


def _message_event(line: dict) -> dict:
    role = line["type"]
    content = line["message"].get("content")
    if isinstance(content, str):
        parts = [{"type": role, "text": content}]
    elif isinstance(content, list):
        parts = [_block_event(role, block) for block in content]
    else:
        parts = [{"type": role, "text": text_of(content)}]
    event = dict(parts[0]) if parts else {"type": role, "text": ""}
    if len(parts) > 1:
        event["blocks"] = parts
    if line.get("isCompactSummary"):
        event["type"] = "summary"
    for source, target in (("isSidechain", "sidechain"), ("isMeta", "meta")):
        if line.get(source):
            event[target] = True
    usage = line["message"].get("usage")
    if role == "assistant" and isinstance(usage, dict):
        # one API message is split over several lines that repeat its usage: the id lets a viewer count it once
        event["usage"] = usage
        event["message-id"] = line["message"].get("id")
    return event


def _block_event(role: str, block) -> dict:
    if not isinstance(block, dict):
        return {"type": role, "text": text_of(block)}
    kind = block.get("type")
    if kind == "text":
        return {"type": role, "text": text_of(block.get("text"))}
    if kind == "thinking":
        return {"type": "reasoning", "text": text_of(block.get("thinking"))}
    if kind == "tool_use":
        return {"type": "tool_use", "tool-name": block.get("name"), "input": block.get("input"),
                "call-id": block.get("id")}
    if kind == "tool_result":
        part = {"type": "tool_result", "content": text_of(block.get("content")), "call-id": block.get("tool_use_id")}
        if block.get("is_error"):
            part["is-error"] = True
        return part
    return {"type": role, "text": text_of(block)}


def _assistant_facts(line: dict, message: dict, facts: Facts) -> None:
    model = message.get("model") if isinstance(message.get("model"), str) and message["model"] != NO_MODEL else None
    facts.model = model
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict) or block.get("type") != "tool_use" or not isinstance(block.get("name"), str):
            continue
        name, call_id, tool_input = block["name"], block.get("id"), block.get("input")
        facts.tools.append((call_id, name, name.lower() == "bash"))
        path = tool_input.get(EDIT_TOOLS[name]) if name in EDIT_TOOLS and isinstance(tool_input, dict) else None
        if isinstance(path, str):
            facts.files.append(path)
        if name in SUBAGENT_TOOLS and isinstance(call_id, str):
            facts.launches.append(call_id)
    usage = message.get("usage")
    if isinstance(usage, dict):
        split = usage.get("cache_creation")
        tokens = {"input": count(usage.get("input_tokens")), "output": count(usage.get("output_tokens")),
                  "cache-read": count(usage.get("cache_read_input_tokens")),
                  "cache-write": count(usage.get("cache_creation_input_tokens")),
                  CACHE_WRITE_1H: count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0}
        key = message.get("id") if isinstance(message.get("id"), str) else line.get("uuid")
        facts.usage = Usage(tokens, key=str(key), model=model)


def _user_facts(line: dict, message: dict, facts: Facts) -> None:
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else \
        content if isinstance(content, list) else []
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("is_error"):
            facts.errors += 1
    result = line.get("toolUseResult")
    agent = result.get("agentId") if isinstance(result, dict) else None
    if isinstance(agent, str) and agent and isinstance(line.get("sessionId"), str):
        launch = next((block.get("tool_use_id") for block in blocks if isinstance(block, dict)
                       and block.get("type") == "tool_result"), None)
        facts.agents.append((launch, f"{line['sessionId']}/agent-{agent}"))
    if line.get("isMeta") or line.get("isSidechain") or line.get("isCompactSummary"):
        return
    prompt = _prompt(blocks)
    if prompt is not None:
        facts.prompt = prompt


def _prompt(blocks: list) -> str | None:
    """The title-ready text of what the person typed, or None for tool results and injected context."""
    texts, images = [], False
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "image":
            images = True
    text = "\n".join(texts).strip()
    if not text:
        return "[image]" if images else None
    if text.startswith(INJECTED_PREFIXES):
        return None
    name = COMMAND_NAME.search(text)
    if name:  # a slash command: shown as `/name args`
        command = name.group(1) if name.group(1).startswith("/") else "/" + name.group(1)
        args = COMMAND_ARGS.search(text)
        return one_line_title(f"{command} {args.group(1)}" if args else command)
    return one_line_title(text)
