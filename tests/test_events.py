"""
Normalized viewer events, on lines taken from the real (and curated) sample sessions.
"""

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fulabd import events
from tests.fixtures import sample_files

CODEX_REAL = "rollout-2026-06-05T10-28-20-019e9625"
CODEX_CURATED = "agent-sessions_stage0_codex_small"
CLAUDE_REAL = "fe5e1c67"
CLAUDE_CURATED = "agent-sessions_stage0_claude_small"


def lines_of(prefix: str) -> list[bytes]:
    path = next(path for path in sample_files() if path.name.startswith(prefix))
    return path.read_bytes().split(b"\n")[:-1]


def find(prefix: str, predicate) -> tuple[int, bytes, dict]:
    """The first line of a sample whose parsed value satisfies `predicate`: (index, raw, parsed)."""
    for index, raw in enumerate(lines_of(prefix)):
        value = orjson.loads(raw)
        if predicate(value):
            return index, raw, value
    raise LookupError(prefix)


def payload_type(kind, payload_kind, **fields):
    def match(value):
        payload = value.get("payload") or {}
        return (value.get("type") == kind and payload.get("type") == payload_kind
                and all(payload.get(key) == expected for key, expected in fields.items()))
    return match


@pytest.mark.parametrize("path", sample_files(), ids=lambda path: path.name[:40])
def test_every_sample_line_gives_a_serializable_event_or_a_documented_skip(path):
    for index, raw in enumerate(path.read_bytes().split(b"\n")[:-1]):
        event = events.normalize(raw, index)
        value = orjson.loads(raw)
        if event is None:
            assert value["type"] == "event_msg" and value["payload"]["type"] in events.DUPLICATE_EVENT_MSGS
            continue
        assert event["line"] == index
        assert event["type"] in {"user", "assistant", "system", "summary", "reasoning", "tool_use", "tool_result",
                                 "par", "raw"}
        assert orjson.loads(orjson.dumps(event)) == event
        assert len(orjson.dumps(event)) <= events.MAX_EVENT_BYTES


def test_codex_messages_map_roles_and_flag_injected_context():
    index, raw, _ = find(CODEX_REAL, payload_type("response_item", "message", role="developer"))
    assert events.normalize(raw, index) == {"type": "system", "line": index, "timestamp": "2026-06-05T04:58:23.498Z",
                                            "text": "[REDACTED_DEVELOPER_CONTEXT]"}
    index, raw, _ = find(CODEX_REAL, lambda v: payload_type("response_item", "message", role="user")(v)
                         and "environment_context" in raw_text(v))
    event = events.normalize(raw, index)
    assert event["type"] == "user" and event["injected"] is True
    index, raw, _ = find(CODEX_REAL, lambda v: payload_type("response_item", "message", role="user")(v)
                         and "REDACTED_PROMPT" in raw_text(v))
    assert events.normalize(raw, index)["text"] == "[REDACTED_PROMPT]"
    assert "injected" not in events.normalize(raw, index)
    index, raw, _ = find(CODEX_REAL, payload_type("response_item", "message", role="assistant"))
    assert events.normalize(raw, index)["type"] == "assistant"


def raw_text(value) -> str:
    return orjson.dumps(value).decode()


def test_codex_event_msg_duplicates_are_skipped_and_other_event_msgs_are_raw():
    for kind in ("user_message", "agent_message"):
        index, raw, _ = find(CODEX_REAL, payload_type("event_msg", kind))
        assert events.normalize(raw, index) is None
    index, raw, value = find(CODEX_REAL, payload_type("event_msg", "token_count"))
    event = events.normalize(raw, index)
    assert (event["type"], event["kind"], event["data"]) == ("raw", "event_msg/token_count", value)
    index, raw, value = find(CODEX_REAL, lambda v: v["type"] == "session_meta")
    assert events.normalize(raw, index)["kind"] == "session_meta"


def test_codex_tool_calls_and_results_carry_call_ids():
    index, raw, value = find(CODEX_CURATED, payload_type("response_item", "function_call"))
    event = events.normalize(raw, index)
    assert event["type"] == "tool_use"
    assert (event["tool-name"], event["input"], event["call-id"]) == (
        value["payload"]["name"], value["payload"]["arguments"], value["payload"]["call_id"])
    index, raw, value = find(CODEX_CURATED, payload_type("response_item", "custom_tool_call"))
    event = events.normalize(raw, index)
    assert (event["type"], event["input"], event["call-id"]) == ("tool_use", value["payload"]["input"],
                                                                 value["payload"]["call_id"])
    index, raw, value = find(CODEX_CURATED, payload_type("response_item", "custom_tool_call_output"))
    event = events.normalize(raw, index)
    assert (event["type"], event["content"], event["call-id"]) == ("tool_result", "a.txt\nb.txt\n",
                                                                   value["payload"]["call_id"])
    index, raw, value = find(CODEX_CURATED, payload_type("response_item", "function_call_output"))
    assert events.normalize(raw, index)["content"] == "a.txt\n"


def test_codex_reasoning_is_summary_text_only_and_compaction_is_a_summary():
    index, raw, value = find(CODEX_CURATED, payload_type("response_item", "reasoning"))
    event = events.normalize(raw, index)
    assert event["type"] == "reasoning"
    assert event["text"] == "\n".join(part["text"] for part in value["payload"]["summary"])
    assert "encrypted_content" not in raw_text(event)
    index, raw, value = find(CODEX_CURATED, lambda v: v["type"] == "compacted")
    assert events.normalize(raw, index)["type"] == "summary"


def test_claude_lines_keep_their_blocks():
    index, raw, value = find(CLAUDE_REAL, lambda v: v["type"] == "summary")
    assert events.normalize(raw, index) == {"type": "summary", "line": index, "timestamp": None,
                                            "text": value["summary"]}
    index, raw, value = find(CLAUDE_REAL, lambda v: v["type"] == "assistant"
                             and [b["type"] for b in v["message"]["content"]] == ["tool_use"])
    block = value["message"]["content"][0]
    event = events.normalize(raw, index)
    assert (event["type"], event["tool-name"], event["input"], event["call-id"]) == (
        "tool_use", block["name"], block["input"], block["id"])
    assert event["timestamp"] == value["timestamp"]
    index, raw, value = find(CLAUDE_REAL, lambda v: v["type"] == "user" and isinstance(v["message"]["content"], list)
                             and v["message"]["content"][0]["type"] == "tool_result")
    event = events.normalize(raw, index)
    assert (event["type"], event["call-id"]) == ("tool_result", value["message"]["content"][0]["tool_use_id"])
    assert event["content"]
    index, raw, value = find(CLAUDE_CURATED, lambda v: v["type"] == "assistant" and len(v["message"]["content"]) > 2)
    event = events.normalize(raw, index)
    kinds = [block["type"] for block in value["message"]["content"]]
    expected = {"text": "assistant", "thinking": "reasoning", "tool_use": "tool_use"}
    assert [block["type"] for block in event["blocks"]] == [expected[kind] for kind in kinds]
    assert event["type"] == expected[kinds[0]]


def test_claude_system_and_unknown_lines():
    index, raw, value = find(CLAUDE_CURATED, lambda v: v["type"] == "system")
    event = events.normalize(raw, index)
    assert (event["type"], event["kind"]) == ("system", value["subtype"])
    index, raw, value = find(CLAUDE_CURATED, lambda v: v["type"] == "attachment")
    event = events.normalize(raw, index)
    assert (event["type"], event["kind"], event["data"]) == ("raw", "attachment", value)
    index, raw, value = find(CLAUDE_CURATED, lambda v: v.get("isCompactSummary"))
    assert events.normalize(raw, index)["type"] == "summary"


def test_broken_lines_are_raw_never_dropped():
    whole = lines_of(CLAUDE_REAL)[5]
    torn = whole[: len(whole) // 2]  # derived: a line cut mid-write
    event = events.normalize(torn + lines_of(CLAUDE_REAL)[6], 5)
    assert (event["type"], event["kind"], event["line"]) == ("raw", "unparsed", 5)
    assert event["text"].startswith(torn.decode())
    assert events.normalize(b"\x00\x00\xff", 7)["kind"] == "unparsed"
    assert events.normalize(b"[1,2]", 8) == {"type": "raw", "line": 8, "timestamp": None, "kind": "non-object",
                                             "data": [1, 2]}


def test_huge_strings_are_cut_and_flagged():
    index, raw, value = find(CLAUDE_REAL, lambda v: v["type"] == "user" and isinstance(v["message"]["content"], list)
                             and v["message"]["content"][0]["type"] == "tool_result")
    value["message"]["content"][0]["content"] = "x" * (5 * events.MAX_STRING)  # derived: a multi-MB tool output
    event = events.normalize(orjson.dumps(value), index)
    assert event["truncated"] is True
    assert len(event["content"]) == events.MAX_STRING
    value["toolUseResult"] = {"stdout": ["y" * 1000] * 2000}
    value["type"] = "unknown-kind"
    event = events.normalize(orjson.dumps(value), index)
    assert event["truncated"] is True and len(orjson.dumps(event)) <= events.MAX_EVENT_BYTES


SIDECAR_PAR = {"id": "par-20260131-201541", "timestamp": "2026-01-31T20:15:41Z", "title": "Stack HUD",
               "tags": ["stack-hud", "par"],
               "questions": {"intention": "I", "happening": "H", "perspectives": "P", "learned": "L", "forward": "F"}}


def test_sidecar_par_renders_as_the_old_lab():
    event = events.par_event(SIDECAR_PAR, 3)
    assert event["text"] == ("## PAR: Stack HUD\n\n**Intention:** I\n\n**Happening:** H\n\n**Perspectives:** P"
                             "\n\n**Learned:** L\n\n**Forward:** F")
    assert (event["type"], event["par-id"], event["par-index"], event["tags"], event["line"]) == (
        "par", "par-20260131-201541", 3, ["stack-hud", "par"], None)
    missing = events.par_event({"id": "p", "questions": {"learned": "only"}}, 0)
    assert missing["text"] == ("## PAR: Session Review\n\n**Intention:** \n\n**Happening:** \n\n**Perspectives:** "
                               "\n\n**Learned:** only\n\n**Forward:** ")
    assert events.par_event({"id": "p", "title": "Bare"}, 0)["text"] == "## PAR: Bare\n\n"


def test_inline_par_lines():
    line = {"type": "par", "timestamp": "2026-01-31T20:15:41Z", "text": "## PAR: x", "par-id": "p1", "tags": ["a"]}
    event = events.normalize(orjson.dumps(line), 4)
    assert (event["type"], event["text"], event["par-id"], event["tags"], event["line"]) == (
        "par", "## PAR: x", "p1", ["a"], 4)
    assert events.normalize(orjson.dumps({"type": "par", "summary": "s"}), 0)["text"] == "s"
    assert events.normalize(orjson.dumps({"type": "par", "message": {"content": "m"}}), 0)["text"] == "m"
    sidecar_shaped = events.normalize(orjson.dumps({"type": "par"} | SIDECAR_PAR), 0)
    assert sidecar_shaped["text"] == events.par_event(SIDECAR_PAR, 0)["text"]
    assert sidecar_shaped["par-id"] == SIDECAR_PAR["id"]


def test_the_samples_are_there():
    """Every sample-driven test here would pass vacuously without them."""
    assert len(sample_files()) >= 9


def test_legacy_codex_lines_are_bare_response_items():
    """Legacy rollouts (no envelope): derived from the ResponseItems a curated `compacted` line re-embeds."""
    _, _, value = find(CODEX_CURATED, lambda v: v["type"] == "compacted" and v["payload"].get("replacement_history"))
    item = next(item for item in value["payload"]["replacement_history"] if item["type"] == "message")
    event = events.normalize(orjson.dumps(item), 2)
    assert (event["type"], event["line"], event["timestamp"]) == (events.CODEX_ROLES[item["role"]], 2, None)
    assert event["text"] == "\n".join(part.get("text") or "[image]" for part in item["content"])  # images: a placeholder
    assert events.normalize(b'{"record_type":"state"}', 3)["kind"] == "record_type/state"


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=3000), min_size=1, max_size=6),
       role=st.sampled_from(["user", "assistant"]))
def test_lines_below_the_small_line_size_give_events_within_the_limits(texts, role):
    """The shortcut in `normalize` (no size check for short lines) must never let a large event through."""
    blocks = [{"type": "text", "text": text} if n % 2 else {"type": "other", "payload": text}
              for n, text in enumerate(texts)]
    raw = orjson.dumps({"type": role, "message": {"content": blocks}})
    assume(len(raw) <= events.SMALL_LINE)
    event = events.normalize(raw, 0)
    assert len(orjson.dumps(event)) <= events.MAX_EVENT_BYTES
    assert all(len(block.get("text", "")) <= events.MAX_STRING for block in event.get("blocks", [event]))


def test_a_claude_assistant_line_carries_its_message_usage_and_id_so_a_turn_counts_it_once():
    line = {"type": "assistant", "message": {"id": "msg_1", "role": "assistant", "content": "hi",
                                             "usage": {"input_tokens": 3, "output_tokens": 5}}}
    event = events.normalize(orjson.dumps(line), 0)
    assert event["usage"] == {"input_tokens": 3, "output_tokens": 5} and event["message-id"] == "msg_1"
    assert "usage" not in events.normalize(orjson.dumps({"type": "user", "message": {"content": "x", "usage": {}}}), 1)
