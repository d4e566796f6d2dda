"""
`GET /fulab/lab/sessions/<id>`: one session's summary, as JSON (EDN with `?format=edn`).
"""

from __future__ import annotations

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
