"""
The one place that knows agent transcript formats.

Each agent is one module with one `AgentFormat` object; `FORMATS` lists them
in detection order.  A third agent is one new module and one line there.
The uploader, the local sources, the viewer's events and the summaries all
come here, so they agree on who a file is and what a line means.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Protocol

from fulabd.formats.claude import ClaudeFormat
from fulabd.formats.codex import CodexFormat
from fulabd.formats.common import Facts, FileIdentity, parse_lines

HEAD_BYTES = 1 << 20  # what everyone reads from a file's start to tell who it is
HEAD_LINES = 50


class AgentFormat(Protocol):
    name: str  # the `source` of its sessions

    def claims(self, lines: list[dict]) -> bool:
        """Whether a file whose first parsed lines are `lines` is in this format."""

    def claims_path(self, path: PurePath) -> bool:
        """Whether the file's place says it is in this format (when its lines do not say)."""

    def identity(self, path: PurePath, lines: list[dict]) -> FileIdentity:
        """Who the file is, from its path and its first parsed lines."""

    def event(self, line: dict):
        """The viewer event of a line (no `line`/`timestamp` keys), None to skip it, or the module's NOT_MINE."""

    def facts(self, line: dict) -> Facts:
        """What a summary takes from one line of a session in this format."""


FORMATS: list[AgentFormat] = [CodexFormat(), ClaudeFormat()]
BY_NAME: dict[str, AgentFormat] = {agent.name: agent for agent in FORMATS}


def head_lines(head: bytes) -> list[dict]:
    """The first complete lines of a file's head (at most HEAD_BYTES of it), parsed."""
    return parse_lines(head[:HEAD_BYTES], HEAD_LINES)


def detect(path: PurePath, lines: list[dict]) -> AgentFormat | None:
    """The format of a file: by its lines first, else by its place."""
    for agent in FORMATS:
        if lines and agent.claims(lines):
            return agent
    return next((agent for agent in FORMATS if agent.claims_path(path)), None)


def identify(path: PurePath, head: bytes, source: str | None = None) -> tuple[str | None, FileIdentity]:
    """(source, identity) of a file from its head; `source` forces the format.  Unknown: the file's stem."""
    lines = head_lines(head)
    agent = BY_NAME.get(source) if source else detect(PurePath(path), lines)
    if agent is None:
        return source, FileIdentity(PurePath(path).name.removesuffix(".jsonl"))
    return agent.name, agent.identity(PurePath(path), lines)


def read_head(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)
