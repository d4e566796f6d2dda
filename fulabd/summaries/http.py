"""
`GET /fulab/lab/sessions/<id>`: one session's summary, as JSON (EDN with `?format=edn`), for stored and
local sessions alike.
"""

from __future__ import annotations

from twisted.web import resource

from fulabd.catalog import StoreSource
from fulabd.export import SessionExport, exported_entry
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
    """`/fulab/lab/sessions/<id>` of a session only a local source (or an archive) serves: its summary, its
    export, and nothing else (PARs are written only to uploaded sessions)."""

    def __init__(self, summaries, session, export):
        super().__init__()
        self.summaries = summaries
        self.session = session
        self.putChild(b"export", export)

    def getChild(self, name, request):
        return self if name == b"" else NotStored(self.session)

    def render_GET(self, request):
        return render_summary(request, self.summaries, self.session)

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            return super().render(request)
        return NotStored(self.session).render(request)


class NotStored(resource.Resource):
    """Anything but the summary and the export of a session the store does not hold."""

    isLeaf = True

    def __init__(self, session):
        super().__init__()
        self.session = session

    def render(self, request):
        return render_data(request, {"ok": False, "err": "unknown-session", "detail": (
            f"{self.session.session_id!r} is not an uploaded session (it is read from --codex-dir, --claude-dir "
            "or --archive-dir): only its summary and export are served here, and PARs are written only to "
            "uploaded sessions")}, 404)


def with_local_sessions(session_child, catalog, summaries):
    """`sessions/<name>`: `session_child(name)` for stored sessions, the summary alone for local ones."""

    def child(name: bytes):
        found = catalog.by_id(name.decode("utf-8", "replace"))
        if found is not None and not isinstance(found[1], StoreSource):
            session, source = found
            return LocalSessionSummary(summaries, session, SessionExport(source, session, exported_entry(summaries)))
        return session_child(name)

    return child
