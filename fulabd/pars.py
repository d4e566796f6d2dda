"""
PARs written over HTTP: `POST /fulab/lab/sessions/<id>/pars` (the web UI's form).

The body is checked here; storing it (durably, in the `.par.edn` sidecar) and
telling every viewer is the store's and the hub's business, exactly as for a
PAR that arrives over the upload WebSocket.
"""

from __future__ import annotations

import orjson
from twisted.logger import Logger
from twisted.web import resource, server

from fulabd.catalog import StoreSource
from fulabd.export import SessionExport
from fulabd.messages import ProtocolError
from fulabd.web import describe, render_data

QUESTIONS = ("intention", "happening", "perspectives", "learned", "forward")
MAX_BODY = 256 * 1024
MAX_TITLE = 500
MAX_TAGS = 50


class BadPar(ValueError):
    """A PAR body that cannot be stored; the message says what to fix."""


def par_from_body(body: bytes) -> dict:
    """The PAR to store, from a JSON body `{title, tags, questions: {intention, …}, id?}`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadPar(f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise BadPar("the body must be a JSON object with a \"title\"")
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        raise BadPar("a PAR needs a non-empty \"title\"")
    if len(title) > MAX_TITLE:
        raise BadPar(f"the title is {len(title)} characters; at most {MAX_TITLE} are accepted")
    par = {"title": title.strip(), "tags": tags_of(data.get("tags")), "questions": questions_of(data.get("questions"))}
    if data.get("lines") is not None:
        par["lines"] = lines_of(data["lines"])
    if "id" in data:
        if not isinstance(data["id"], str) or not data["id"].strip():
            raise BadPar("\"id\", when given, must be a non-empty string")
        par["id"] = data["id"].strip()
    return par


def lines_of(lines) -> list[int]:
    """A PAR's `lines: [first, last]`: the range of session line indexes it is about."""
    if (not isinstance(lines, list) or len(lines) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lines)):
        raise BadPar("\"lines\" must be [first, last]: two line indexes of the session (integers, 0 or more)")
    if lines[0] > lines[1]:
        raise BadPar(f"\"lines\" is [{lines[0]}, {lines[1]}]: the first line must not come after the last")
    return list(lines)


def tags_of(tags) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = tags.replace(",", " ").split()
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise BadPar("\"tags\" must be a list of strings or one comma-separated string")
    cleaned = []
    for tag in tags:
        tag = tag.strip().lstrip(":")
        if any(c.isspace() for c in tag):
            raise BadPar(f"tag {tag!r} contains a space; separate tags with commas")
        if tag and tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise BadPar(f"{len(cleaned)} tags given; at most {MAX_TAGS} are accepted")
    return cleaned


def questions_of(questions) -> dict:
    if questions is None:
        return {}
    if not isinstance(questions, dict):
        raise BadPar(f"\"questions\" must be an object with the keys {', '.join(QUESTIONS)}")
    unknown = sorted(set(questions) - set(QUESTIONS))
    if unknown:
        raise BadPar(f"unknown question(s) {', '.join(unknown)}; the questions are {', '.join(QUESTIONS)}")
    answers = {}
    for key in QUESTIONS:
        value = questions.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadPar(f"the answer to {key!r} must be a string")
        if value.strip():
            answers[key] = value.strip()
    return answers


def error(request, code: int, err: str, detail: str) -> bytes:
    return render_data(request, {"ok": False, "err": err, "detail": detail}, code)


class UnknownSession(resource.Resource):
    """Any request under `/fulab/lab/sessions/<id>` for an id that is not stored."""

    isLeaf = True

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def render(self, request):
        return error(request, 404, "unknown-session",
                     f"no uploaded session {self.name!r} is stored (PARs are written only to uploaded "
                     "sessions); see /fulab/lab/sessions for the ids")


class SessionPars(resource.Resource):
    """`/fulab/lab/sessions/<id>/pars`: GET lists the session's PARs, POST adds one."""

    isLeaf = True
    _log = Logger()

    def __init__(self, store, session):
        super().__init__()
        self.store = store
        self.session = session

    def render_GET(self, request):
        return render_data(request, {"ok": True, "session-id": self.session.session_id,
                                     "pars": self.store.pars(self.session)})

    def render_POST(self, request):
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            return error(request, 413, "too-large", f"the body is over {MAX_BODY} bytes; shorten the answers")
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return error(request, 413, "too-large", f"the body is over {MAX_BODY} bytes; shorten the answers")
        try:
            par = par_from_body(body)
        except BadPar as e:
            return error(request, 400, "bad-par", str(e))
        gone = []
        request.notifyFinish().addErrback(gone.append)
        self.store.add_par(self.session.session_id, par).addCallbacks(
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
            self._finish(request, gone, 503, {"ok": False, "err": failure.value.code, "detail": failure.value.detail})
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
    """`/fulab/lab/sessions/<id>/…`: what belongs to one stored session."""

    def __init__(self, store, session):
        super().__init__()
        self.putChild(b"pars", SessionPars(store, session))
        self.putChild(b"export", SessionExport(StoreSource(store), session, lambda s: describe(s, s.modified, 0.0)))


def session_child(store, name: bytes) -> resource.Resource:
    """The resource for `/fulab/lab/sessions/<name>`, where name is a session id or a listing's `id`."""
    raw = name.decode("utf-8", "replace")
    session = store.by_safe_id(raw) or store.get(raw)
    if session is None or not session.stored:
        return UnknownSession(raw)
    return SessionResource(store, session)
