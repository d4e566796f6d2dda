"""
Which session a file is, and its metadata, from the file itself: the rules
are `fulabd.formats`' (the daemon's local sources use the same ones).

A sub-agent file is its own session whose `parent-session-id` is its parent's.
A rewritten file's new content is a new generation, `<id>~g<n>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from fulabd import formats
from fulabd.uploader.compressed import open_content, session_stem

GENERATION = "~g"


class NotReady(Exception):
    """The file does not yet hold a complete first line to tell its session from."""


@dataclass(frozen=True)
class Identity:
    session_id: str
    meta: dict = field(default_factory=dict)

    def generation(self, number: int) -> "Identity":
        """Generation `number` (2, 3, …) of this session: the content of a rewritten file."""
        if number <= 1:
            return self
        meta = dict(self.meta)
        meta.setdefault("parent-session-id", self.session_id)
        return replace(self, session_id=f"{self.session_id}{GENERATION}{number}", meta=meta)


def read_head(path: Path) -> bytes:
    """The first bytes of the session's lines (decompressed, for a `.jsonl.zst`), as much as formats reads."""
    with open_content(path) as handle:
        return handle.read(formats.HEAD_BYTES)  # a .zst damaged within its head raises `Unreadable`


def identify(path: Path, source: str | None = None, overrides: dict | None = None) -> Identity:
    """The session a file holds.  Raises NotReady while its first line is incomplete.

    A first line longer than the head that `fulabd.formats` reads cannot say who the file is:
    the file is then known by its name alone.
    """
    head = read_head(Path(path))
    if b"\n" not in head and len(head) < formats.HEAD_BYTES:
        raise NotReady(f"{path} has no complete line yet")
    named = Path(path).with_name(session_stem(path) + ".jsonl")  # a .jsonl.zst is known as its .jsonl
    source, identity = formats.identify(named, head, source)
    meta = identity.meta()
    if source:
        meta["source"] = source
    meta.update({key: value for key, value in (overrides or {}).items() if value is not None})
    if "project" not in meta and "cwd" in meta:
        meta["project"] = meta["cwd"]
    return Identity(identity.session_id, meta)
