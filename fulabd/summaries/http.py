"""
`GET /fulab/lab/sessions/<id>`: one session's summary, as JSON (EDN with `?format=edn`), for stored and
local sessions alike.
"""

from __future__ import annotations

from twisted.web import resource

from fulabd.catalog import StoreSource
from fulabd.web import render_data

RETRY_SECONDS = b"1"


def render_summary(request, summaries, session) -> bytes:
    summary = summaries.of(session)
    if summary is None:
        request.setHeader(b"retry-after", RETRY_SECONDS)
        return render_data(request, {"ok": False, "err": "summary-pending", "session-id": session.session_id,
                                     "detail": "the summary of this session is still being read from its file; "
                                               "ask again in a second"}, 503)
    return render_data(request, {"ok": True, "summary": summary})


class LocalSessionSummary(resource.Resource):
    """`/fulab/lab/sessions/<id>` of a session only a local source serves: its summary, and nothing below it."""

    isLeaf = True

    def __init__(self, summaries, session):
        super().__init__()
        self.summaries = summaries
        self.session = session

    def render_GET(self, request):
        if request.postpath and request.postpath != [b""]:
            return render_data(request, {"ok": False, "err": "unknown-session", "detail": (
                f"{self.session.session_id!r} is a local session (--codex-dir/--claude-dir): only its summary is "
                "served here, and PARs are written only to uploaded sessions")}, 404)
        return render_summary(request, self.summaries, self.session)


def with_local_sessions(session_child, catalog, summaries):
    """`sessions/<name>`: `session_child(name)` for stored sessions, the summary alone for local ones."""

    def child(name: bytes):
        found = catalog.by_id(name.decode("utf-8", "replace"))
        if found is not None and not isinstance(found[1], StoreSource):
            return LocalSessionSummary(summaries, found[0])
        return session_child(name)

    return child
