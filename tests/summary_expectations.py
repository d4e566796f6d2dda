"""
What a session's summary must say, worked out here straight from the raw lines and the price file,
without fulabd's code, so that the summary tests compare two independent readings.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from tests.fixtures import REPO

PRICES = json.loads((REPO / "fulabd" / "data" / "prices.json").read_text())
CLAUDE_NOT_TYPED = ("<local-command-stdout>", "<local-command-stderr>", "<system-reminder>", "<bash-stdout>",
                    "<bash-stderr>", "<user-prompt-submit-hook>", "Caveat: The messages below were generated",
                    "[Request interrupted by user", "This session is being continued from a previous conversation")
CODEX_NOT_TYPED = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<INSTRUCTIONS>")
MTOK = 1_000_000


def rows(path: Path) -> list[dict]:
    out = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def instant(text):
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def z(moment) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


def short(text: str) -> str:
    return " ".join(text.split())[:120]


def price_of(model):
    if model is None:
        return None
    bare = re.sub(r"\[\w+\]$", "", model)
    for name in (model, bare, re.sub(r"-\d{8}$", "", bare)):
        if name in PRICES["models"]:
            return PRICES["models"][name]
    return None


def dollars(model, tokens: dict) -> float | None:
    prices = price_of(model)
    if prices is None:
        return None
    one_hour = tokens.get("1h", 0)
    return (tokens["input"] * prices["input"] + tokens["output"] * prices["output"]
            + tokens["cache-read"] * prices["cache-read"]
            + (tokens["cache-write"] - one_hour) * prices["cache-write"]
            + one_hour * prices.get("cache-write-1h", prices["cache-write"])) / MTOK


def total_cost(priced: list[tuple]) -> float | None:
    cost = 0.0
    for model, tokens in priced:
        if not any(tokens.values()):
            continue
        part = dollars(model, tokens)
        if part is None:
            return None
        cost += part
    return round(cost, 6)


def times(lines, key=lambda line: line.get("timestamp")):
    found = [moment for moment in (instant(key(line)) for line in lines) if moment is not None]
    return (min(found), max(found)) if found else (None, None)


def common(started, ended, **fields) -> dict:
    fields.update({"started": z(started), "ended": z(ended),
                   "duration-s": None if started is None else round((ended - started).total_seconds(), 3)})
    return fields


# -- Claude -----------------------------------------------------------------------

def claude_typed(line: dict) -> str | None:
    if line.get("type") != "user" or line.get("isMeta") or line.get("isSidechain") or line.get("isCompactSummary"):
        return None
    content = (line.get("message") or {}).get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    text = "\n".join(b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text").strip()
    if not text:
        return "[image]" if any(isinstance(b, dict) and b.get("type") == "image" for b in blocks) else None
    if text.startswith(CLAUDE_NOT_TYPED):
        return None
    if "<command-name>" in text:
        name = text.split("<command-name>")[1].split("</command-name>")[0].strip()
        name = name if name.startswith("/") else "/" + name
        if "<command-args>" in text:
            name += " " + text.split("<command-args>")[1].split("</command-args>")[0]
        return short(name)
    return short(text)


def claude_expected(path: Path) -> dict:
    lines = rows(path)
    prompts = [p for p in map(claude_typed, lines) if p is not None]
    title = next((short(line[field]) for kind, field in (("custom-title", "customTitle"), ("ai-title", "aiTitle"),
                                                         ("summary", "summary"))
                  for line in reversed(lines) if line.get("type") == kind and line.get(field)),
                 prompts[0] if prompts else None)
    uses = [block for line in lines if line.get("type") == "assistant"
            for block in ((line.get("message") or {}).get("content") or []) if isinstance(block, dict)
            and block.get("type") == "tool_use" and isinstance(block.get("name"), str)]
    results = [block for line in lines if line.get("type") == "user"
               for block in (((line.get("message") or {}).get("content")) or [])
               if isinstance(block, dict) and block.get("type") == "tool_result"]
    files = []
    for use in uses:
        field = {"NotebookEdit": "notebook_path"}.get(use["name"], "file_path")
        path_value = (use.get("input") or {}).get(field) if use["name"] in (
            "Edit", "Write", "MultiEdit", "NotebookEdit") else None
        if path_value and path_value not in files:
            files.append(path_value)
    final: dict = {}  # message id -> (model, usage): the one with the most output tokens, first on ties
    for line in lines:
        message = line.get("message") or {}
        if line.get("type") != "assistant" or not isinstance(message.get("usage"), dict):
            continue
        key = message.get("id") or line.get("uuid")
        if key not in final or message["usage"].get("output_tokens", 0) > final[key][1].get("output_tokens", 0):
            final[key] = (None if message.get("model") == "<synthetic>" else message.get("model"), message["usage"])
    priced = []
    for model, usage in final.values():
        split = usage.get("cache_creation") or {}
        priced.append((model, {"input": usage.get("input_tokens", 0), "output": usage.get("output_tokens", 0),
                               "cache-read": usage.get("cache_read_input_tokens", 0),
                               "cache-write": usage.get("cache_creation_input_tokens", 0),
                               "1h": split.get("ephemeral_1h_input_tokens", 0)}))
    tokens = {kind: sum(t[kind] for _, t in priced) for kind in ("input", "output", "cache-read", "cache-write")}
    return common(*times(lines), title=title, turns=len(prompts), tokens=tokens, **{
        "models": sorted({line["message"]["model"] for line in lines if line.get("type") == "assistant"
                          and isinstance(line.get("message"), dict) and "model" in line["message"]} - {"<synthetic>"}),
        "tool-calls": dict(Counter(use["name"] for use in uses)),
        "tool-errors": sum(1 for block in results if block.get("is_error")),
        "files-touched": files,
        "commands": sum(1 for use in uses if use["name"].lower() == "bash"),
        "subagents": sorted(use["id"] for use in uses if use["name"] in ("Task", "Agent") and use.get("id")),
        "cost-usd": total_cost(priced)})


# -- Codex ------------------------------------------------------------------------

def codex_text(content) -> str:
    parts = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "input_image":
            parts.append("[image]")
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "\n".join(p for p in parts if p)


def codex_expected(path: Path) -> dict:
    lines = rows(path)
    items = [line["payload"] for line in lines if line.get("type") == "response_item"]
    events = [line["payload"] for line in lines if line.get("type") == "event_msg"]
    typed = [codex_text(item.get("content")) for item in items if item.get("type") == "message"
             and item.get("role") == "user"]
    typed = [text for text in typed if not text.lstrip().startswith(CODEX_NOT_TYPED)]
    calls = [item for item in items if item.get("type") in (
        "function_call", "custom_tool_call", "local_shell_call", "tool_search_call", "web_search_call",
        "image_generation_call")]
    names = [call["name"] if isinstance(call.get("name"), str) else call["type"] for call in calls]
    model, previous, priced, last = None, {}, [], None
    for line in lines:  # the running total's growth is the model in use's
        payload = line.get("payload") or {}
        if line.get("type") == "turn_context" and isinstance(payload.get("model"), str):
            model = payload["model"]
        info = payload.get("info") if payload.get("type") == "token_count" else None
        if line.get("type") == "event_msg" and isinstance(info, dict) and info.get("total_token_usage"):
            total = info["total_token_usage"]
            last = {"input": total["input_tokens"] - total.get("cached_input_tokens", 0),
                    "output": total["output_tokens"], "cache-read": total.get("cached_input_tokens", 0),
                    "cache-write": total.get("cache_write_input_tokens", 0)}
            priced.append((model, {k: max(0, v - previous.get(k, 0)) for k, v in last.items()}))
            previous = last
    return common(*times(lines), title=short(typed[0]) if typed else None, turns=len(typed), **{
        "models": sorted({line["payload"]["model"] for line in lines if line.get("type") == "turn_context"
                          and isinstance(line["payload"].get("model"), str)}),
        "tool-calls": dict(Counter(names)),
        "tool-errors": 0,  # no sample output reports a failed command
        "files-touched": [],  # no sample apply_patch names a file
        "commands": sum(1 for name in names if name in ("shell", "shell_command", "exec_command", "container.exec",
                                                        "local_shell_call")),
        "subagents": sorted({event["new_thread_id"] for event in events
                             if event.get("type") == "collab_agent_spawn_end"}),
        "tokens": last or {"input": 0, "output": 0, "cache-read": 0, "cache-write": 0},
        "cost-usd": total_cost(priced)})


def expected(path: Path, source: str) -> dict:
    return codex_expected(path) if source == "codex" else claude_expected(path)
