"""
Session summaries: title, dates, turns, tools, tokens and cost of every session.

`SessionSummaries` is the seam others code against (the listings, the search
index, `GET /fulab/lab/sessions/<id>`); `Summaries` is the implementation that
follows the hub.
"""

from __future__ import annotations

from typing import Protocol

from fulabd.summaries.service import Summaries


class SessionSummaries(Protocol):
    def get(self, session_id: str) -> dict | None:
        """The summary of a session by its id (or listing `id`), None when unknown or not yet computed.

        Call it in the reactor thread; the dict is a fresh copy the caller may keep.

        Always present: session-id, id, source, project, title, started, ended, duration-s, models, turns,
        tool-calls, tool-errors, files-touched, commands, subagents, tokens, tokens-with-subagents, cost-usd,
        prices-date, lines (see the README's "Summaries").
        """


__all__ = ["SessionSummaries", "Summaries"]
