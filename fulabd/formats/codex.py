"""
Codex CLI rollouts: envelope lines `{timestamp, type, payload}` and the legacy
bare-object lines (session-formats.md §1).
"""

from __future__ import annotations

from pathlib import PurePath

import orjson

from fulabd.formats.common import (
    NOT_MINE, UUID, Facts, FileIdentity, Usage, count, kind_of, one_line_title, text_of,
)

# event_msg payload types that repeat a response_item of the same turn: skipped by the viewer.
DUPLICATE_EVENT_MSGS = frozenset({"user_message", "agent_message", "agent_reasoning"})
TOOL_CALLS = frozenset({"function_call", "custom_tool_call", "local_shell_call", "tool_search_call",
                        "web_search_call", "image_generation_call"})
TOOL_OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output", "tool_search_output"})
ROLES = {"user": "user", "assistant": "assistant", "developer": "system", "system": "system"}
# Text a user-role message carries when the CLI injects context rather than the person typing.
INJECTED_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<INSTRUCTIONS>")
COMMAND_TOOLS = frozenset({"shell", "shell_command", "exec_command", "container.exec", "local_shell_call"})
PATCH_FILE_MARKERS = ("*** Add File: ", "*** Update File: ", "*** Delete File: ", "*** Move to: ")


class CodexFormat:
    name = "codex"

    # -- detection and identity ------------------------------------------------

    def claims(self, lines: list[dict]) -> bool:
        first = lines[0] if lines else {}
        return first.get("type") == "session_meta" or (
            "id" in first and "type" not in first and "sessionId" not in first)

    def claims_path(self, path: PurePath) -> bool:
        return ".codex" in path.parts or path.name.startswith("rollout-")

    def identity(self, path: PurePath, lines: list[dict]) -> FileIdentity:
        """The first `session_meta`'s id (legacy: line 1's `id`), else the file name's uuid, else its stem."""
        first = lines[0] if lines else {}
        payload = first.get("payload") if first.get("type") == "session_meta" else first if "type" not in first \
            else None
        if isinstance(payload, dict) and isinstance(payload.get("id"), str) and payload["id"]:
            cwd, originator = payload.get("cwd"), payload.get("originator")
            return FileIdentity(payload["id"], cwd=cwd if isinstance(cwd, str) else None,
                                originator=originator if isinstance(originator, str) else None,
                                parent_session_id=_spawning_thread(payload.get("source")))
        matches = UUID.findall(path.name)
        return FileIdentity(matches[-1] if matches else path.name.removesuffix(".jsonl"))

    # -- the viewer's events ---------------------------------------------------

    def event(self, line: dict):
        """The viewer event of a Codex line (without `line`/`timestamp`), None to skip it, or NOT_MINE."""
        kind = kind_of(line)
        payload = line.get("payload")
        if kind == "response_item" and isinstance(payload, dict):
            return _item_event(payload) or _raw(line, "response_item/" + str(payload.get("type")))
        if kind == "event_msg" and isinstance(payload, dict):
            if kind_of(payload) in DUPLICATE_EVENT_MSGS:
                return None
            return _raw(line, "event_msg/" + str(payload.get("type")))
        if kind == "compacted" and isinstance(payload, dict):
            return {"type": "summary", "text": text_of(payload.get("message")), "kind": "compacted"}
        if kind in TOOL_CALLS or kind in TOOL_OUTPUTS or kind in ("message", "reasoning"):
            return _item_event(line) or _raw(line, str(kind))  # legacy rollouts: bare ResponseItems
        if "record_type" in line and "type" not in line:
            return _raw(line, "record_type/" + str(line["record_type"]))
        return NOT_MINE

    # -- what a summary needs ----------------------------------------------------

    def facts(self, line: dict) -> Facts:
        facts = Facts(timestamp=_timestamp(line))
        kind = kind_of(line)
        payload = line.get("payload")
        if kind == "turn_context" and isinstance(payload, dict) and isinstance(payload.get("model"), str):
            facts.model = payload["model"]
        elif kind == "response_item" and isinstance(payload, dict):
            _item_facts(payload, facts)
        elif kind in TOOL_CALLS or kind in TOOL_OUTPUTS or kind == "message":
            _item_facts(line, facts)
        elif kind == "event_msg" and isinstance(payload, dict):
            _event_facts(payload, facts)
        return facts


def _spawning_thread(source) -> str | None:
    """The parent thread of a sub-agent rollout: `source.subagent.thread_spawn.parent_thread_id`."""
    spawn = source.get("subagent") if isinstance(source, dict) else None
    spawn = spawn.get("thread_spawn") if isinstance(spawn, dict) else None
    parent = spawn.get("parent_thread_id") if isinstance(spawn, dict) else None
    return parent if isinstance(parent, str) and parent else None


def _timestamp(line: dict) -> str | None:
    timestamp = line.get("timestamp")
    if not isinstance(timestamp, str) and isinstance(line.get("payload"), dict):
        timestamp = line["payload"].get("timestamp")
    return timestamp if isinstance(timestamp, str) else None


def _raw(line: dict, kind: str) -> dict:
    return {"type": "raw", "kind": kind, "data": line}


def _item_event(item: dict) -> dict | None:
    kind = kind_of(item)
    if kind == "message":
        role = item.get("role")
        text = text_of(item.get("content"))
        event = {"type": ROLES.get(role, "system"), "text": text}
        if role is not None and role not in ROLES:
            event["role"] = role
        if role == "user" and text.lstrip().startswith(INJECTED_PREFIXES):
            event["injected"] = True
        return event
    if kind == "agent_message":
        return {"type": "assistant", "text": text_of(item.get("content")), "kind": "agent_message"}
    if kind == "reasoning":
        return {"type": "reasoning", "text": text_of(item.get("summary"))}
    if kind in TOOL_CALLS:
        if "input" in item:
            tool_input = item["input"]
        elif "arguments" in item:
            tool_input = item["arguments"]
        else:
            tool_input = item.get("action")
        return {"type": "tool_use", "tool-name": item.get("name") or kind, "input": tool_input,
                "call-id": item.get("call_id")}
    if kind in TOOL_OUTPUTS:
        output = item.get("output", item.get("tools"))
        return {"type": "tool_result", "content": text_of(output) if not isinstance(output, str) else output,
                "call-id": item.get("call_id")}
    return None


def _item_facts(item: dict, facts: Facts) -> None:
    kind = kind_of(item)
    if kind == "message" and item.get("role") == "user":
        text = text_of(item.get("content"))
        if not text.lstrip().startswith(INJECTED_PREFIXES):
            facts.prompt = one_line_title(text)
    elif kind in TOOL_CALLS:
        name = item.get("name") if isinstance(item.get("name"), str) else kind
        facts.tools.append((item.get("call_id"), name, name in COMMAND_TOOLS))
        if name == "apply_patch":
            facts.files.extend(patched_files(item.get("input", item.get("arguments"))))
    elif kind in TOOL_OUTPUTS and _failed(item.get("output")):
        facts.errors = 1


def _event_facts(payload: dict, facts: Facts) -> None:
    kind = kind_of(payload)
    if kind == "token_count":
        info = payload.get("info")
        total = info.get("total_token_usage") if isinstance(info, dict) else None
        if isinstance(total, dict):
            cached = count(total.get("cached_input_tokens"))
            facts.usage = Usage({"input": max(0, count(total.get("input_tokens")) - cached),
                                 "output": count(total.get("output_tokens")), "cache-read": cached,
                                 "cache-write": count(total.get("cache_write_input_tokens"))})
    elif kind == "collab_agent_spawn_end" and isinstance(payload.get("new_thread_id"), str):
        facts.agents.append((payload.get("call_id"), payload["new_thread_id"]))


def patched_files(patch) -> list[str]:
    """The paths an `apply_patch` input adds, updates, deletes or moves to (the input may be JSON-wrapped)."""
    if isinstance(patch, str) and patch.lstrip().startswith("{"):
        try:
            patch = orjson.loads(patch)
        except orjson.JSONDecodeError:
            pass
    if isinstance(patch, dict):
        patch = patch.get("input", patch.get("patch"))
    if not isinstance(patch, str):
        return []
    return [line[len(marker):].strip() for line in patch.splitlines()
            for marker in PATCH_FILE_MARKERS if line.startswith(marker)]


def _failed(output) -> bool:
    """A tool output that reports a non-zero exit: `Exit code: N` text, or legacy `{"metadata":{"exit_code":N}}`."""
    if not isinstance(output, str):
        return False
    if output.startswith("Exit code: "):
        code = output[len("Exit code: "):].split("\n", 1)[0].strip()
        return code.lstrip("-").isdigit() and int(code) != 0
    if output.startswith("{"):
        try:
            value = orjson.loads(output)
        except orjson.JSONDecodeError:
            return False
        metadata = value.get("metadata") if isinstance(value, dict) else None
        code = metadata.get("exit_code") if isinstance(metadata, dict) else None
        return isinstance(code, int) and code != 0
    return False
