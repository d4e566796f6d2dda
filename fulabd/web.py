"""
The HTTP side of the one port: session listings, status, and the dispatch of
WebSocket upgrades to the upload or viewer endpoint by request path.
"""

from __future__ import annotations


import orjson
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger
from twisted.web import resource, server, util

from fulabd import edn, endpoints, ui
from fulabd.access import Decision, Gate
from fulabd.channel import GatedChannel, GatedRequest, head_of
from fulabd.closing import ClosesGracefully
from fulabd.endpoints import STREAM_PATH, is_upload_path
from fulabd.listing import BadListingRequest, parse_query
from fulabd.messages import INVALID_PATH, now_iso
from fulabd.netaddr import host_of
from fulabd.tokens import ADMIN

UI_PATH = "/fulab/lab/"
REFUSED_MESSAGE_LIMIT = 64 * 1024  # a refused client has nothing to say
STATUS_DETAILS = ("root", "listeners", "tls")  # for `admin` tokens only: where files are, which ports

_log = Logger()


def is_websocket(request) -> bool:
    return (request.getHeader(b"upgrade") or b"").lower() == b"websocket"


def wants_edn(request) -> bool:
    return request.args.get(b"format", [b""])[0] == b"edn" or b"application/edn" in (
        request.getHeader(b"accept") or b"")


def render_data(request, data: dict, code: int = 200) -> bytes:
    """`data` as JSON, or as EDN when the client asks for it."""
    request.setResponseCode(code)
    request.setHeader(b"cache-control", b"no-store")
    if wants_edn(request):
        request.setHeader(b"content-type", b"application/edn; charset=utf-8")
        return edn.dumps(data)
    request.setHeader(b"content-type", b"application/json")
    return orjson.dumps(data)


class RefusedProtocol(ClosesGracefully, WebSocketServerProtocol):
    """A WebSocket that is not served: say why, then close with 1008 (policy violation)."""

    def onOpen(self):
        self.sendMessage(orjson.dumps(self.factory.explain(self.http_request_path)))
        self.sendCloseFrame(code=1008, reasonUtf8=self.factory.reason)


class RefusedFactory(WebSocketServerFactory):
    protocol = RefusedProtocol

    def __init__(self, explain, reason: bytes):
        """`explain(path)` is the error message sent before the close."""
        super().__init__()
        self.explain = explain
        self.reason = reason
        # The gate judged the Origin already; a `null` one (a sandboxed page) is told why like any other.
        self.setProtocolOptions(maxMessagePayloadSize=REFUSED_MESSAGE_LIMIT,
                                maxFramePayloadSize=REFUSED_MESSAGE_LIMIT, allowNullOrigin=True)


def invalid_path(path: str) -> dict:
    return {"type": "error", "err": INVALID_PATH, "path": path,
            "detail": f"no WebSocket endpoint at {path}; uploads go to /fulab/lab/upload/ws, "
                      f"viewers to {STREAM_PATH}?session=ID or /?path=PATH"}


def refusal(decision: Decision, path: str) -> dict:
    return {"type": "error", "err": decision.err, "path": path, "detail": decision.detail}


class Ambiguous(resource.Resource):
    """A request the gate judged as another endpoint than the one it is routed to (which the gate's refusal of
    repeated headers leaves no way to make): answered, and served nothing."""

    isLeaf = True

    def render(self, request):
        return render_data(request, {"ok": False, "err": "bad-request", "detail": (
            "the request's headers name two different requests; send each header once")}, 400)


class UpgradeRequired(resource.Resource):
    """
    A plain HTTP request for a WebSocket path: most often a proxy dropped the
    Upgrade header on the way, so say that, instead of a bare 404.
    """

    isLeaf = True

    def render(self, request):
        request.setResponseCode(426, b"Upgrade Required")
        request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (b"This path is a WebSocket endpoint, but the request had no 'Upgrade: websocket' header. "
                b"If it came through a proxy, the proxy dropped it; nginx needs, in the location block: "
                b"proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
                b"proxy_set_header Connection \"upgrade\";\n")


class WebSocketDispatch(resource.Resource):
    """The root of the site: WebSocket upgrades go by path, everything else to the HTTP tree."""

    def __init__(self, upload_factory, stream_factory=None):
        super().__init__()
        self.upload = WebSocketResource(upload_factory)
        self.stream = WebSocketResource(stream_factory) if stream_factory is not None else None
        self.refused = WebSocketResource(RefusedFactory(invalid_path, b"invalid path"))

    def getChildWithDefault(self, name, request):
        judged = getattr(request, "decision", None)
        if judged is not None and judged.endpoint.websocket != is_websocket(request):
            return Ambiguous()  # the gate let through another request than this one: serve neither
        if is_websocket(request):
            return self.websocket_for(request)
        if request.uri == b"/":  # a browser pointed at the port gets the UI (`/?path=` upgrades are viewers)
            return util.Redirect(UI_PATH.encode())
        path = endpoints.request_path(request.uri)
        if is_upload_path(path) or path == STREAM_PATH:
            return UpgradeRequired()
        return super().getChildWithDefault(name, request)

    def websocket_for(self, request):
        path = endpoints.request_path(request.uri)  # as the gate saw it
        params = {name.decode("utf-8", "replace") for name in request.args}
        endpoint = endpoints.websocket_endpoint(path, params)
        judged = getattr(request, "decision", None)
        if judged is not None and judged.endpoint is not endpoint:
            return self.refused
        if endpoint is endpoints.STREAM_SOCKET and self.stream is not None:
            return self.stream
        if endpoint is endpoints.UPLOAD_SOCKET:
            return self.upload
        return self.refused

    def render(self, request):
        if is_websocket(request):
            return self.websocket_for(request).render(request)
        return resource.Resource.render(self, request)


def describe(session, now: float, active_window: float, extra=None) -> dict:
    """One entry of the session listings; `extra(session, now)` adds fields (the summary)."""
    meta = session.meta
    entry = {
        "id": session.safe_id,
        "session-id": session.session_id,
        "project": meta.get("project"),
        "path": session.path,
        "modified": now_iso(session.modified),
        "size-kb": session.size // 1024,
        "active": now - session.modified <= active_window and not meta.get("archived"),
        "source": meta.get("source"),
        "originator": meta.get("originator"),
        "cwd": meta.get("cwd"),
        "events": session.count,
        "pars": session.par_count,
        "uploading": session.uploaders > 0,
    }
    for key in ("created-at", "remote-source", "uploader", "parent-session-id", "archived", "error"):
        if meta.get(key) is not None:
            entry[key] = meta[key]
    if extra is not None:
        entry.update(extra(session, now))
    return entry


class Sessions(resource.Resource):
    """`GET /fulab/lab/sessions[/active]`: the listings, from memory.

    Without parameters, every session, newest write first (the old shape, plus `token`); with `limit`
    (and `cursor`), a page, latest change first, and `next`; with `since=TOKEN`, only the sessions that
    changed since that token. See docs/protocol.md.
    """

    isLeaf = False

    def __init__(self, listing, clock, active_window: float, active_only: bool = False, session_child=None,
                 merge=None, extra=None):
        """`merge(request, body)`, when given, returns a Deferred of the body to send instead (other labs'
        sessions added); it is applied to every answer but a later page (`cursor`).  `extra(session, now)`
        adds fields to each entry (the summary)."""
        super().__init__()
        self.listing = listing
        self.extra = extra
        self.clock = clock
        self.active_window = active_window
        self.active_only = active_only
        self.session_child = session_child
        self.merge = merge

    def getChild(self, name, request):
        """`sessions/<id>/…`, when the tree was built with a `session_child` factory."""
        if self.session_child is None:
            return super().getChild(name, request)
        return self.session_child(name)

    def render_GET(self, request):
        try:
            limit, cursor, since = parse_query(request.args)
        except BadListingRequest as e:
            return render_data(request, {"ok": False, "err": "bad-request", "detail": str(e)}, 400)
        token = self.listing.token
        reply = {"ok": True}
        if since is not None:
            sessions = self.listing.since(since)
            reply["since"] = since
            if sessions is None:
                sessions, reply["reset"] = self._newest_first(self.listing.everything()), True
        elif limit is not None:
            sessions, reply["next"] = self.listing.page(limit, cursor)
        else:
            sessions = self._newest_first(self.listing.everything())
        now = self.clock.seconds()
        entries = [describe(session, now, self.active_window, self.extra) for session in sessions]
        if self.active_only:
            entries = [entry for entry in entries if entry["active"]]
        body = reply | {"sessions": entries, "token": token}
        if self.merge is None or cursor is not None:
            return render_data(request, body)
        return render_later(request, self.merge(request, body))

    @staticmethod
    def _newest_first(sessions: list) -> list:
        return sorted(sessions, key=lambda session: session.modified, reverse=True)


def render_later(request, deferred) -> int:
    """Answer `request` with the data `deferred` fires with (unless the client has gone by then)."""
    gone = []
    request.notifyFinish().addErrback(gone.append)

    def write(data: dict):
        if not gone:
            request.write(render_data(request, data))
            request.finish()

    deferred.addCallback(write).addErrback(
        lambda failure: _log.failure("could not answer {path}", failure, path=request.path.decode("utf-8", "replace")))
    return server.NOT_DONE_YET


class Status(resource.Resource):
    isLeaf = True

    def __init__(self, status):
        super().__init__()
        self.status = status

    def render_GET(self, request):
        status = self.status()
        principal = getattr(request, "principal", None)
        if principal is not None and not principal.may(ADMIN):
            status = {key: value for key, value in status.items() if key not in STATUS_DETAILS}
        return render_data(request, status)


def build_tree(dispatch: WebSocketDispatch, listing, clock, active_window: float, status,
               session_child=None, merge=None, sessions_children=None, listing_extra=None) -> resource.Resource:
    """Mount the web UI and the HTTP resources under `/fulab/lab/` of the dispatching root.

    `listing` is a `fulabd.listing.Listing`; `session_child(name)` gives the resource for
    `sessions/<name>` (e.g. its PARs); `merge` is the listings' hook (see `Sessions`);
    `sessions_children` are more resources under `sessions/`; `listing_extra(session, now)` adds fields
    to each listing entry (the summary).
    """
    fulab = resource.Resource()
    lab = ui.Lab()
    ui.mount(lab)
    sessions = Sessions(listing, clock, active_window, session_child=session_child, merge=merge,
                        extra=listing_extra)
    sessions.putChild(b"active", Sessions(listing, clock, active_window, active_only=True, merge=merge,
                                          extra=listing_extra))
    sessions.putChild(b"", sessions)
    for name, child in (sessions_children or {}).items():
        sessions.putChild(name, child)
    lab.putChild(b"sessions", sessions)
    lab.putChild(b"status", Status(status))
    fulab.putChild(b"lab", lab)
    dispatch.putChild(b"fulab", fulab)
    return lab


class Refused(resource.Resource):
    """The gate's refusal of a plain HTTP request, as JSON (or EDN)."""

    isLeaf = True

    def __init__(self, decision: Decision):
        super().__init__()
        self.decision = decision

    def render(self, request):
        decision = self.decision
        if decision.err == "unauthorized":
            request.setHeader(b"www-authenticate", b'Bearer realm="fulab"')
        body = render_data(request, {"ok": False} | refusal(decision, request.path.decode("utf-8", "replace")),
                           code=decision.code)
        if decision.code == 503:  # WebSocket clients show only the status line of a refused handshake
            request.setResponseCode(503, decision.detail.encode("utf-8", "replace"))
        return body


def refused_resource(decision: Decision, websocket: bool) -> resource.Resource:
    """What answers a refused request: a refused token or scope on a WebSocket is said over the WebSocket."""
    if websocket and decision.err in ("unauthorized", "forbidden"):
        reason = decision.err.encode()
        return WebSocketResource(RefusedFactory(lambda path: refusal(decision, path), reason))
    return Refused(decision)


class Health(resource.Resource):
    """`GET /healthz`: 200 `ok` while the daemon can take uploads, else 503 and why not."""

    isLeaf = True

    def __init__(self, problem):
        """`problem()` is None when healthy, else what is wrong."""
        super().__init__()
        self.problem = problem

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problem = self.problem()
        if problem is None:
            return b"ok\n"
        request.setResponseCode(503)
        return f"unavailable: {problem}\n".encode()


class LabSite(server.Site):
    """The daemon's site: every connection counted against the caps, every request head decided by the
    `gate` before anything else, and no access-log line per request (the UI polls, and URLs may hold
    `?token=`)."""

    protocol = GatedChannel

    def __init__(self, root, gate: Gate | None = None, head_timeout: float | None = None, **kw):
        super().__init__(root, requestFactory=GatedRequest, **kw)
        self.gate = gate or Gate()
        self.head_timeout = head_timeout if head_timeout is not None else kw.get("timeout")

    def accepted(self, channel: GatedChannel) -> bool:
        """A connection was accepted: it may wait for its head, unless too many already do."""
        limits, peer = self.gate.limits, host_of(channel.transport.getPeer())
        if not limits.may_wait(peer, per_peer=not self.gate.proxies.trusts(peer)):
            self.gate.refused["over-limit"] += 1
            return False
        limits.waiting[peer] += 1
        channel.waiting_peer = peer
        return True

    def released(self, channel: GatedChannel):
        """A connection closed (or its head was decided): it no longer counts."""
        self._stop_waiting(channel)
        if channel.address is not None:
            self.gate.limits.closed(channel.address)
            channel.address = None

    def _stop_waiting(self, channel: GatedChannel):
        peer, channel.waiting_peer = channel.waiting_peer, None
        if peer is not None:
            self.gate.limits.waiting[peer] -= 1
            if not self.gate.limits.waiting[peer]:
                del self.gate.limits.waiting[peer]

    def decide(self, channel: GatedChannel, request, command: bytes, uri: bytes) -> Decision:
        """The gate's decision on a head; a connection's first head also counts it against the caps."""
        decision = self.gate.decide(head_of(channel, request, command, uri))
        if channel.waiting_peer is None:
            return decision
        self._stop_waiting(channel)
        decision = self.gate.count(decision)
        if not decision.refused and not self.gate.is_probe(decision.principal):
            channel.address = decision.address
        return decision

    def getResourceFor(self, request):
        decision = request.decision
        if decision is not None and decision.refused:
            request.site = self
            return refused_resource(decision, is_websocket(request))
        return super().getResourceFor(request)

    def log(self, request):
        pass
