"""
PARs written over HTTP: `POST /fulab/lab/sessions/<id>/pars` (the web UI's form).

The body is decoded here; its fields are checked by the store (`par_schema`,
the same check for every route), which stores it durably in the `.par.edn`
sidecar, and the hub tells every viewer, exactly as for a PAR that arrives
over the upload WebSocket.
"""

from __future__ import annotations

import orjson
from twisted.logger import Logger
from twisted.web import resource, server

from fulabd.catalog import StoreSource
from fulabd.endpoints import is_decimal
from fulabd.export import SessionExport, exported_entry
from fulabd.messages import BAD_PAR, UNKNOWN_SESSION, ProtocolError
from fulabd.summaries.http import render_summary
from fulabd.web import render_data

MAX_BODY = 256 * 1024


def par_from_body(body: bytes) -> dict:
    """The PAR object of a JSON body; its fields are checked by the store (`par_schema`), as on every route."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(BAD_PAR, f"the body is not valid JSON ({e}); send a JSON object", field="par") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_PAR, "the body must be a JSON object with a \"title\"", field="par")
    return data


def error(request, code: int, err: str, detail: str, **extra) -> bytes:
    return render_data(request, {"ok": False, "err": err, "detail": detail, **extra}, code)


class UnknownSession(resource.Resource):
    """Any request under `/fulab/lab/sessions/<id>` for an id that is not stored."""

    isLeaf = True

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def render(self, request):
        return error(request, 404, UNKNOWN_SESSION,
                     f"no session {self.name!r} is listed here; see /fulab/lab/sessions for the ids (a listing's "
                     "`id`, or its `session-id` URL-encoded)")


class SessionPars(resource.Resource):
    """`/fulab/lab/sessions/<id>/pars`: GET lists the session's PARs, POST adds one."""

    isLeaf = True
    _log = Logger()

    def __init__(self, store, session, author_of=lambda request: None):
        """`author_of(request)` is the token name recorded as the PAR's author."""
        super().__init__()
        self.store = store
        self.session = session
        self.author_of = author_of

    def render_GET(self, request):
        return render_data(request, {"ok": True, "session-id": self.session.session_id,
                                     "pars": self.store.pars(self.session)})

    def render_POST(self, request):
        length = request.getHeader(b"content-length")
        if length is not None and is_decimal(length) and int(length) > MAX_BODY:
            return error(request, 413, "too-large", f"the body is over {MAX_BODY} bytes; shorten the answers")
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return error(request, 413, "too-large", f"the body is over {MAX_BODY} bytes; shorten the answers")
        try:
            par = par_from_body(body)
        except ProtocolError as e:
            return error(request, 400, e.code, e.detail, **e.extra)
        gone = []
        request.notifyFinish().addErrback(gone.append)
        self.store.add_par(self.session.session_id, par, author=self.author_of(request)).addCallbacks(
            self._stored, self._failed, callbackArgs=(request, gone), errbackArgs=(request, gone))
        return server.NOT_DONE_YET

    def _stored(self, result, request, gone):
        index, par, added = result
        self._log.info("session {safe_id}: PAR {par_id} written over HTTP", safe_id=self.session.safe_id,
                       par_id=par["id"])
        self._finish(request, gone, 201 if added else 200,
                     {"ok": True, "par": par, "index": index, "dedup": not added})

    def _failed(self, failure, request, gone):
        if failure.check(ProtocolError):
            error = failure.value
            code = {BAD_PAR: 400, UNKNOWN_SESSION: 404}.get(error.code, 503)
            self._finish(request, gone, code, {"ok": False, "err": error.code, "detail": error.detail, **error.extra})
            return
        self._log.failure("storing a PAR failed", failure)
        self._finish(request, gone, 500, {"ok": False, "err": "storage-failed",
                                          "detail": "the server could not store the PAR; try again"})

    def _finish(self, request, gone: list, code: int, data: dict):
        """Answer, unless the client has gone (the PAR is stored either way)."""
        if gone:
            return
        request.write(render_data(request, data, code))
        request.finish()


class SessionResource(resource.Resource):
    """`/fulab/lab/sessions/<id>/…`: what belongs to one stored session; GET on it is its summary."""

    def __init__(self, store, session, summaries, author_of=lambda request: None):
        super().__init__()
        self.session = session
        self.summaries = summaries
        self.putChild(b"pars", SessionPars(store, session, author_of))
        self.putChild(b"export", SessionExport(StoreSource(store), session, exported_entry(summaries)))

    def render_GET(self, request):
        return render_summary(request, self.summaries, self.session)


def session_child(store, name: bytes, summaries, author_of=lambda request: None) -> resource.Resource:
    """The resource for `/fulab/lab/sessions/<name>`, where name is a session id or a listing's `id`."""
    raw = name.decode("utf-8", "replace")
    session = store.by_safe_id(raw) or store.get(raw)
    if session is None or not session.stored:
        return UnknownSession(raw)
    return SessionResource(store, session, summaries, author_of)
