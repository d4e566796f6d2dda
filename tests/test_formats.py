"""
One place knows agent formats: the uploader and the local sources name every sample the same way,
from the same head, and a third agent would be one more entry in the registry.
"""

from pathlib import Path, PurePath

import pytest

from fulabd import formats
from fulabd.local import index_file
from fulabd.uploader.identity import identify
from tests.fixtures import sample_files

EXPECTED_IDS = {
    "agent-sessions_stage0_claude_small.jsonl": "ses_stage0_small",
    "agent-a0ad4f44468bdf20d.jsonl": "0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f/agent-a0ad4f44468bdf20d",
    "agent-sessions_stage0_codex_small.jsonl": "019fc8be-3658-7ca3-9e29-000000000000",
}


def source_of(path: Path) -> str:
    return "codex" if "codex" in path.parts else "claude"


@pytest.mark.parametrize("path", sample_files(), ids=lambda path: path.name[:40])
def test_the_uploader_and_the_local_sources_agree_on_every_sample(path):
    uploaded = identify(path)
    local = index_file(str(path), source_of(path))
    assert uploaded.session_id == local.session_id == EXPECTED_IDS.get(path.name, local.session_id)
    assert uploaded.meta["source"] == local.meta["source"] == source_of(path)
    for key in ("cwd", "originator", "parent-session-id", "project"):
        assert uploaded.meta.get(key) == local.meta.get(key), key


@pytest.mark.parametrize("path", sample_files(), ids=lambda path: path.name[:40])
def test_detection_from_the_lines_alone_finds_the_agent(path):
    lines = formats.head_lines(path.read_bytes())
    assert formats.detect(PurePath("/elsewhere/x.jsonl"), lines).name == source_of(path)


def test_a_file_that_says_nothing_is_known_by_its_place_then_its_name():
    assert formats.detect(PurePath("/home/a/.codex/sessions/x.jsonl"), [{}]).name == "codex"
    assert formats.detect(PurePath("/home/a/.claude/projects/p/x.jsonl"), []).name == "claude"
    assert formats.identify(PurePath("/tmp/notes.jsonl"), b"{}\n") == (None, formats.FileIdentity("notes"))


def test_everyone_reads_the_same_head(tmp_path):
    """A line past the head is not read: the uploader and the local sources see the same lines."""
    path = tmp_path / "-p" / "0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f.jsonl"
    path.parent.mkdir()
    filler = b'{"type":"summary","summary":"' + b"x" * formats.HEAD_BYTES + b'"}\n'
    path.write_bytes(filler + b'{"type":"user","cwd":"/far","sessionId":"s"}\n')
    assert "cwd" not in identify(path).meta
    assert "cwd" not in index_file(str(path), "claude").meta


def test_a_codex_sub_agent_rollout_names_its_parent(tmp_path):
    path = tmp_path / "rollout-2026-01-01T00-00-00-019fc8be-3658-7ca3-9e29-00000000000a.jsonl"
    path.write_bytes(b'{"type":"session_meta","payload":{"id":"child","cwd":"/r","source":{"subagent":'
                     b'{"thread_spawn":{"parent_thread_id":"parent-1"}}}}}\n')
    assert identify(path).meta["parent-session-id"] == "parent-1"
    assert index_file(str(path), "codex").meta["parent-session-id"] == "parent-1"
