"""
The gate on a real daemon with real sockets: every path the daemon serves
(walked from its resource tree) with no token, a wrong token and a right one;
and each attack of issue #9 redone and refused: the `/healthz` WebSocket
bypass, work before the gate (a 2 GB POST), the token in the log from a HEAD,
cross-site requests, missing browser hardening, equal tokens.
"""

import contextlib
import http.client
import secrets
import shutil
import socket
import threading
import urllib.request
from urllib.parse import quote

import orjson
import pytest
from twisted.internet import defer, threads
from twisted.web import resource
from twisted.web.test.requesthelper import DummyRequest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from fulabd import admin, endpoints, tap, ui
from fulabd.store import SessionStore
from tests.fixtures import Daemon, Nginx, sample_files, sample_lines

pytestmark = pytest.mark.slow

UPLOAD = "/fulab/lab/upload/ws"
SESSION = "s1"
SCOPED = {"admin": "", "uploader": "upload", "bob": "upload", "reader": "read", "reviewer": "read,review"}
SECURITY_HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer"}


@pytest.fixture
def tokens():
    return {name: secrets.token_urlsafe(32) for name in SCOPED}


def token_file(folder, tokens) -> str:
    path = folder / "tokens"
    path.write_text("".join(f"{tokens[name]} {name} {scopes}\n" for name, scopes in SCOPED.items()))
    path.chmod(0o600)
    return str(path)


def bearer(token: str) -> dict:
    return {"Authorization": "Bearer " + token}


def request(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """(status, headers with lower-case names, body) of one HTTP request on its own connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


def refused_socket(server, path: str, headers: dict | None = None, **kw) -> dict:
    """The one message a refused WebSocket gets, after checking it is then closed with 1008."""
    with connect(server.url + path, additional_headers=headers or {}, **kw) as ws:
        reply = orjson.loads(ws.recv(timeout=30))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1008, (path, reply)
    return reply


@pytest.fixture
def guarded(tmp_path, tokens):
    """A daemon with scoped tokens, and session s1 uploaded by `uploader` with one PAR."""
    server = Daemon(tmp_path / "remote", "--token-file", token_file(tmp_path, tokens),
                    env={"TMPDIR": str(tmp_path / "daemon-tmp")})
    (tmp_path / "daemon-tmp").mkdir()
    server.start()
    lines = sample_lines(sample_files()[0])
    with connect(server.url + UPLOAD, additional_headers=bearer(tokens["uploader"]), max_size=None) as ws:
        assert call(ws, {"type": "init", "session-id": SESSION, "events": lines})["count"] == len(lines)
        assert call(ws, {"type": "par", "session-id": SESSION, "par": {"title": "first"}})["type"] == "ack"
    yield server
    server.stop()


def served_paths(tmp_path, root, monkeypatch) -> list[str]:
    """Every HTTP path of the daemon's resource tree, built as the daemon builds it, on a copy of its store.

    Static children are walked; a resource that makes children on demand (`getChild`) is asked for
    the stored session's id, so a path added later, fixed or per session, is in the list.
    """
    copy = tmp_path / "walked-store"
    shutil.copytree(root, copy)
    # No reactor runs here: the store's start-up load (a thread job) runs at once, so its sessions are known.
    monkeypatch.setattr(threads, "deferToThread", lambda function, *args: defer.maybeDeferred(function, *args))
    options = tap.Options()
    options.parseOptions(["--root", str(copy)])
    service = tap.makeService(options)
    store = next(s for s in service if isinstance(s, SessionStore))
    store.startService()
    site = next(s for s in service if hasattr(s, "factory")).factory
    paths = []

    def walk(node, path: str):
        paths.append(path or "/")
        if getattr(node, "isLeaf", False):
            return
        children = dict(node.children)
        if type(node).getChild is not resource.Resource.getChild:
            children.setdefault(SESSION.encode(), node.getChild(SESSION.encode(), DummyRequest([])))
        for name, child in children.items():
            child_path = path + "/" + name.decode()
            if child is not node and child_path not in paths:
                walk(child, child_path)

    try:
        walk(site.resource, "")
    finally:
        store.stopService()
    return sorted(set(paths))


def test_every_path_and_websocket_is_gated(guarded, tokens, tmp_path, monkeypatch):
    paths = served_paths(tmp_path, guarded.root, monkeypatch)
    assert {"/healthz", "/metrics", "/fulab/lab/status", "/fulab/lab/sessions", f"/fulab/lab/sessions/{SESSION}/pars",
            "/fulab/lab/app.js"} <= set(paths)
    public = {"/healthz"} | ui.public_paths()
    wrong = {"Authorization": "Bearer not-" + tokens["admin"]}
    for path in paths:
        for headers in ({}, wrong):
            status, reply_headers, body = request(guarded, "GET", path, headers)
            if path in public:
                assert status == 200, path
                shipped = {entry.read_bytes() for entry, _ in ui.served_files().values()}
                assert body == b"ok\n" if path == "/healthz" else body in shipped  # the package's own bytes
            else:
                assert status == 401 and orjson.loads(body)["err"] == "unauthorized", (path, status)
            post = request(guarded, "POST", path, headers | {"Content-Type": "application/json"},
                           orjson.dumps({"title": "sneaked in"}))
            assert post[0] == 401, (path, post)
        status, _, _ = request(guarded, "GET", path, bearer(tokens["admin"]))
        assert status not in (401, 403), path

    stored = str(guarded.root / f"{SESSION}.jsonl")
    query = f"?path={quote(stored)}&session={SESSION}"
    sockets = sorted(set(paths) | set(endpoints.UPLOAD_PATHS) | {endpoints.STREAM_PATH, *endpoints.OLD_VIEWER_PATHS})
    for path in sockets:
        for headers in ({}, wrong):
            reply = refused_socket(guarded, path + query, headers)
            assert reply["err"] == "unauthorized", (path, reply)
        with connect(guarded.url + path + query, additional_headers=bearer(tokens["admin"]), max_size=None) as ws:
            if endpoints.is_upload_path(path):
                assert call(ws, {"type": "ping"})["type"] == "pong", path
                continue
            first = orjson.loads(ws.recv(timeout=30))
            if endpoints.is_stream_request(path, {"path"}):
                assert first["type"] == "init" and first["session-id"] == SESSION, path
            else:
                assert first["err"] == "invalid-path", (path, first)
    pars = request(guarded, "GET", f"/fulab/lab/sessions/{SESSION}/pars", bearer(tokens["admin"]))[2]
    assert [par["title"] for par in orjson.loads(pars)["pars"]] == ["first"]


def test_healthz_opens_no_websocket_and_no_stream(guarded):
    """The bypass: `ws://HOST/healthz?path=<stored file>` streamed the transcript with no token."""
    stored = quote(str(guarded.root / f"{SESSION}.jsonl"))
    for path in (f"/healthz?path={stored}", f"/healthz?session={SESSION}", f"/metrics?path={stored}"):
        assert refused_socket(guarded, path)["err"] == "unauthorized"
    assert request(guarded, "GET", f"/healthz?path={stored}")[2] == b"ok\n"


def raw_exchange(server, head: bytes, body_bytes: int = 0) -> bytes:
    """Send a request head and up to `body_bytes` of body (as far as the server takes them); its answer."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(head)
        chunk, sent = b"x" * 65536, 0
        try:
            while sent < body_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed its side without reading the body
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
        return answer
    finally:
        sock.close()


def test_a_2gb_post_is_answered_from_its_headers_and_nothing_is_spooled(guarded, tokens, tmp_path):
    spool = tmp_path / "daemon-tmp"
    head = (b"POST /fulab/lab/sessions/s1/pars HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2000000000\r\n")
    answer = raw_exchange(guarded, head + b"\r\n", body_bytes=64 << 20)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    right = head + b"Authorization: Bearer " + tokens["admin"].encode() + b"\r\n"
    answer = raw_exchange(guarded, right + b"\r\n", body_bytes=64 << 20)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"err":"too-large"' in answer, answer[:300]
    expecting = raw_exchange(guarded, head + b"Expect: 100-continue\r\n\r\n")
    assert expecting.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in expecting
    other = (b"POST /fulab/lab/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\nAuthorization: Bearer "
             + tokens["admin"].encode() + b"\r\n\r\n")
    assert raw_exchange(guarded, other, body_bytes=10).startswith(b"HTTP/1.1 413 ")
    chunked = right.replace(b"Content-Length: 2000000000\r\n", b"Transfer-Encoding: chunked\r\n")
    assert raw_exchange(guarded, chunked + b"\r\n", body_bytes=1 << 20).startswith(b"HTTP/1.1 411 ")
    assert list(spool.iterdir()) == []
    over = right.replace(b"2000000000", str(endpoints.PAR_BODY_LIMIT + 1).encode())
    assert raw_exchange(guarded, over + b"\r\n", body_bytes=endpoints.PAR_BODY_LIMIT + 1).startswith(b"HTTP/1.1 413 ")


def test_a_request_that_repeats_a_deciding_header_is_refused_whole(guarded, tokens, tmp_path):
    """The gate reads a header's first value, Twisted its last and Autobahn all of them: given twice, each could
    see another request (a public UI file to the gate, a viewer socket to the dispatch)."""
    socket_head = (b"Host: 127.0.0.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\n")
    viewer = b"GET /fulab/lab/?path=&session=s1&raw=1 HTTP/1.1\r\n" + socket_head
    for upgrades in (b"Upgrade: x\r\nUpgrade: websocket\r\n", b"Upgrade: websocket\r\nUpgrade: x\r\n"):
        answer = raw_exchange(guarded, viewer + upgrades + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ") and b"upgrade" in answer and b"101" not in answer[:12], answer
    listing = (b"GET /fulab/lab/sessions HTTP/1.1\r\n" + socket_head + b"Upgrade: websocket\r\nUpgrade: x\r\n"
               b"Authorization: Bearer " + tokens["bob"].encode() + b"\r\n\r\n")
    answer = raw_exchange(guarded, listing)
    assert answer.startswith(b"HTTP/1.1 400 ") and SESSION.encode() not in answer, answer
    twice = (b"Authorization: Bearer " + tokens["bob"].encode() + b"\r\nAuthorization: Bearer x\r\n")
    upload = b"GET " + UPLOAD.encode() + b" HTTP/1.1\r\n" + socket_head + b"Upgrade: websocket\r\n" + twice
    assert raw_exchange(guarded, upload + b"\r\n").startswith(b"HTTP/1.1 400 ")
    chunked = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: identity\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    assert raw_exchange(guarded, chunked, body_bytes=8 << 20).startswith(b"HTTP/1.1 400 ")
    assert list((tmp_path / "daemon-tmp").iterdir()) == []
    assert request(guarded, "GET", "/fulab/lab/sessions", bearer(tokens["reader"]))[0] == 200  # one of each is fine


def test_a_request_for_the_whole_server_is_gated_like_any_other(guarded, tokens):
    """twisted.web answers `OPTIONS *` itself, before any resource: without a token it must still be refused."""
    for method in (b"OPTIONS", b"DELETE"):
        answer = raw_exchange(guarded, method + b" * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 401 "), answer
    allowed = raw_exchange(guarded, b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                           b"Authorization: Bearer " + tokens["reader"].encode() + b"\r\n\r\n")
    assert allowed.startswith(b"HTTP/1.1 200 "), allowed


def test_head_gets_headers_only_and_the_token_stays_out_of_the_log(guarded, tokens):
    wrong = "not-" + tokens["reader"]
    for token in (tokens["reader"], wrong):
        status, headers, body = request(guarded, "HEAD", f"/fulab/lab/sessions?token={token}")
        assert body == b"" and status == (200 if token == tokens["reader"] else 401)
        assert int(headers["content-length"]) > 0
    guarded.wait_for_log(r"refused HEAD /fulab/lab/sessions from 127\.0\.0\.1: wrong token")
    guarded.stop()
    log = "\n".join(guarded.log)
    assert all(token not in log for token in tokens.values()) and wrong not in log
    assert "HEAD request" not in log


def test_security_headers_on_every_response(guarded, tokens):
    answers = [request(guarded, "GET", path, headers) for path, headers in [
        ("/fulab/lab/", {}), ("/fulab/lab/app.js", {}), ("/healthz", {}), ("/fulab/lab/sessions", {}),
        ("/fulab/lab/sessions", bearer(tokens["reader"])), ("/no/such/thing", bearer(tokens["reader"])),
        ("/metrics", bearer(tokens["reader"]))]]
    answers.append(request(guarded, "POST", "/fulab/lab/sessions", bearer(tokens["admin"]), b"x"))
    assert sorted({status for status, _, _ in answers}) == [200, 401, 403, 404, 413]
    for _, headers, _ in answers:
        assert {name: headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
        csp = headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'",
                          f"connect-src 'self' ws://127.0.0.1:{guarded.port} wss://127.0.0.1:{guarded.port}"):
            assert directive in csp, (directive, csp)
    assert "unsafe-inline" not in csp


# -- Origin ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def stopping(process):
    """A started `Daemon` or `Nginx`, stopped when the `with` block ends."""
    try:
        yield process
    finally:
        process.stop()


def running(*args, **kw):
    return stopping(Daemon(*args, **kw).start())


def par_post(server, headers: dict, title: str = "from a page"):
    return request(server, "POST", f"/fulab/lab/sessions/{SESSION}/pars",
                   {"Content-Type": "application/json"} | headers, orjson.dumps({"title": title}))


def test_pages_of_other_origins_are_refused_and_clients_without_origin_are_not(tmp_path):
    with running(tmp_path / "remote", "--allowed-origin", "https://lab.example.org") as server:
        own = f"http://127.0.0.1:{server.port}"
        with connect(server.url + UPLOAD) as ws:  # no Origin: the uploader, curl, Emacs
            assert call(ws, {"type": "init", "session-id": SESSION, "events": ["x"]})["count"] == 1
        for evil in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}", "null",
                     f"https://127.0.0.1:{server.port}"):
            reply = refused_socket(server, f"/fulab/lab/stream/ws?session={SESSION}", origin=evil)
            assert reply["err"] == "unauthorized" and "--allowed-origin" in reply["detail"]
            assert refused_socket(server, UPLOAD, origin=evil)["err"] == "unauthorized"
            status, _, body = par_post(server, {"Origin": evil})
            assert status == 403 and orjson.loads(body)["err"] == "forbidden"
        status, _, body = request(server, "POST", f"/fulab/lab/sessions/{SESSION}/pars",
                                  {"Content-Type": "text/plain", "Origin": own}, orjson.dumps({"title": "t"}))
        assert status == 415 and orjson.loads(body)["err"] == "unsupported-media-type"
        form = request(server, "POST", f"/fulab/lab/sessions/{SESSION}/pars",
                       {"Content-Type": "application/x-www-form-urlencoded"}, b"title=t")
        assert form[0] == 415
        assert par_post(server, {"Origin": own}, "own page")[0] == 201
        assert par_post(server, {"Origin": "https://lab.example.org"}, "allowed page")[0] == 201
        assert par_post(server, {}, "curl")[0] == 201
        with connect(server.url + f"/fulab/lab/stream/ws?session={SESSION}", origin=own) as ws:
            assert orjson.loads(ws.recv(timeout=30))["type"] == "init"
        assert request(server, "GET", "/fulab/lab/sessions", {"Origin": "http://evil.example"})[0] == 200
        pars = orjson.loads(request(server, "GET", f"/fulab/lab/sessions/{SESSION}/pars")[2])["pars"]
        assert [par["title"] for par in pars] == ["own page", "allowed page", "curl"]


def test_a_refused_peer_that_does_not_answer_the_close_still_reads_why(tmp_path):
    """A slow peer that reads nothing until the closing handshake has timed out still finds the refusal and
    the 1008 close frame, then the end of the stream: the connection ends with a FIN, not a reset (which
    would make its kernel discard the unread frames, and a browser report 1006)."""
    with running(tmp_path / "remote") as server, socket.create_connection(("127.0.0.1", server.port)) as peer:
        peer.sendall(f"GET /fulab/lab/stream/ws?session={SESSION} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n\r\n".encode())
        server.wait_for_log("did not answer the close frame in time")
        received = b""
        while chunk := peer.recv(65536):
            received += chunk
    head, _, frames = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames[0] == 0x81 and b'"err":"unauthorized"' in frames
    assert frames[-(4 + len(b"unauthorized")):-len(b"unauthorized")] == bytes([0x88, 2 + len(b"unauthorized"), 0x03, 0xF0])


def test_behind_a_trusted_proxy_the_forwarded_host_and_scheme_are_the_origin(tmp_path):
    with running(tmp_path / "remote", "--trusted-proxy", "127.0.0.1") as server:
        with connect(server.url + UPLOAD) as ws:
            call(ws, {"type": "init", "session-id": SESSION, "events": ["x"]})
        proxied = {"X-Forwarded-Host": "lab.example.org", "X-Forwarded-Proto": "https"}
        assert par_post(server, proxied | {"Origin": "https://lab.example.org"})[0] == 201
        assert par_post(server, proxied | {"Origin": f"http://127.0.0.1:{server.port}"})[0] == 403


# -- scopes and ownership -------------------------------------------------------------------------

def test_each_scope_allows_its_own_and_is_forbidden_the_rest(guarded, tokens):
    def forbidden(answer):
        status, _, body = answer
        reply = orjson.loads(body)
        return status == 403 and reply["err"] == "forbidden" and reply["detail"].startswith("this token may not")

    uploader, reader, reviewer, admin = (bearer(tokens[n]) for n in ("uploader", "reader", "reviewer", "admin"))
    assert forbidden(request(guarded, "GET", "/fulab/lab/sessions", uploader))
    assert forbidden(par_post(guarded, reader))
    for spelling in ("/metrics", "/%6detrics", "/metrics/x"):  # twisted.web routes all three to the metrics
        assert forbidden(request(guarded, "GET", spelling, reader)), spelling
    assert request(guarded, "GET", "/%6detrics", bearer(tokens["admin"]))[0] == 200
    with connect(guarded.url + f"/fulab/lab/%73tream/ws?session={SESSION}", additional_headers=reader) as ws:
        assert orjson.loads(ws.recv(timeout=30))["type"] == "init"  # the dispatch routes as the gate judged
    assert par_post(guarded, reviewer)[0] == 201
    assert request(guarded, "GET", "/metrics", admin)[0] == 200
    reply = refused_socket(guarded, f"/fulab/lab/stream/ws?session={SESSION}", uploader)
    assert reply["err"] == "forbidden" and "'read' scope" in reply["detail"]
    reply = refused_socket(guarded, UPLOAD, reader)
    assert reply["err"] == "forbidden" and "'upload' scope" in reply["detail"]
    basic = orjson.loads(request(guarded, "GET", "/fulab/lab/status", reader)[2])
    detailed = orjson.loads(request(guarded, "GET", "/fulab/lab/status", admin)[2])
    assert basic["running"] is True and not {"root", "listeners"} & set(basic)
    assert detailed["root"] == str(guarded.root) and detailed["listeners"]


def test_an_upload_token_adds_only_to_its_own_sessions(tmp_path, tokens):
    root = tmp_path / "remote"
    open_server = Daemon(root).start()  # first without tokens: a session that belongs to no one
    with connect(open_server.url + UPLOAD) as ws:
        assert call(ws, {"type": "init", "session-id": "nobodys", "events": ["a"]})["count"] == 1
    open_server.stop()
    with running(root, "--token-file", token_file(tmp_path, tokens)) as server:
        with connect(server.url + UPLOAD, additional_headers=bearer(tokens["uploader"])) as ws:
            assert call(ws, {"type": "init", "session-id": "mine", "events": ["a"]})["count"] == 1
        with connect(server.url + UPLOAD, additional_headers=bearer(tokens["bob"])) as ws:
            for message in ({"type": "event", "session-id": "mine", "event": "squat"},
                            {"type": "init", "session-id": "mine", "events": ["a", "b"]},
                            {"type": "par", "session-id": "mine", "par": {"title": "t"}},
                            {"type": "resume", "session-id": "mine"}):
                reply = call(ws, message)
                assert reply["err"] == "forbidden" and "created with another token" in reply["detail"], reply
            assert call(ws, {"type": "event", "session-id": "nobodys", "event": "b"})["count"] == 2
            assert call(ws, {"type": "init", "session-id": "bobs", "events": ["a"]})["count"] == 1
        with connect(server.url + UPLOAD, additional_headers=bearer(tokens["admin"])) as ws:
            assert call(ws, {"type": "event", "session-id": "mine", "event": "b"})["count"] == 2
        listing = orjson.loads(request(server, "GET", "/fulab/lab/sessions", bearer(tokens["admin"]))[2])
        owners = {entry["session-id"]: entry.get("uploader") for entry in listing["sessions"]}
        assert owners == {"mine": "uploader", "bobs": "bob", "nobodys": None}  # adding to it did not squat it
        assert (root / "mine.jsonl").read_bytes() == b"a\nb\n"


# -- connections ----------------------------------------------------------------------------------

def test_http_connections_count_against_the_caps(tmp_path):
    with running(tmp_path / "remote", "--max-connections-per-ip", "2", "--restart-interval", "600") as server:
        held = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(2)]
        for connection in held:  # keep-alive: each stays open after its answer
            connection.request("GET", "/fulab/lab/sessions")
            assert connection.getresponse().read()
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url + UPLOAD)
        assert refused.value.response.status_code == 503
        status, _, body = request(server, "GET", "/fulab/lab/sessions")
        assert status == 503 and orjson.loads(body)["err"] == "over-limit"
        server.wait_for_log(r"refused a connection from 127\.0\.0\.1", count=2)
        held.pop().close()
        with connect_when_free(server) as ws:
            assert call(ws, {"type": "ping"})["type"] == "pong"


def connect_when_free(server, attempts: int = 200):
    """A WebSocket, once the server has seen a closed connection free its slot (it logs nothing for that)."""
    for _ in range(attempts):
        try:
            return connect(server.url + UPLOAD)
        except InvalidStatus:
            threading.Event().wait(0.05)
    raise AssertionError("no connection slot was freed")


def test_a_request_head_sent_a_byte_at_a_time_is_dropped(tmp_path):
    with running(tmp_path / "remote", "--handshake-timeout", "1") as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        closed = threading.Event()

        def trickle():
            for byte in b"GET /fulab/lab/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 10_000:
                if closed.wait(0.2):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        assert sock.recv(1) == b""  # closed by the server while the client was still sending
        closed.set()
        sender.join()
        server.wait_for_log(r"dropped a connection from 127\.0\.0\.1: no complete request head within 1(\.0)? s")
        sock.close()


def test_status_and_doctor_say_which_scope_is_missing(guarded, tokens, monkeypatch, capsys):
    monkeypatch.setenv("FULAB_TOKEN", tokens["reader"])  # doctor reads it, as its message says
    assert admin.main(["doctor", guarded.url + UPLOAD, "--timeout", "10"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] ping/pong: the daemon accepted the token but refused it here: this token may not send lines" in out
    assert "'upload' scope" in out
    monkeypatch.setenv("FULAB_TOKEN", tokens["uploader"])
    assert admin.main(["doctor", guarded.url + UPLOAD, "--timeout", "10"]) == 0  # a laptop's token is enough
    out = capsys.readouterr().out
    assert "[warn] listings: not checked: GET /fulab/lab/sessions was refused: this token may not read" in out
    assert "all checks passed" in out
    assert admin.main(["status", "--url", guarded.http]) == 1
    err = capsys.readouterr().err
    assert "answered 403" in err and "this token may not read listings" in err and "'read' scope" in err


def test_behind_the_shipped_nginx_the_ui_origin_is_its_own(tmp_path, ca):
    cert, key = ca.issue("nginx")
    with running(tmp_path / "remote", "--trusted-proxy", "127.0.0.1") as server, \
            stopping(Nginx(tmp_path / "nginx", server.port, cert, key).start()) as proxy:
        with connect(server.url + UPLOAD) as ws:
            call(ws, {"type": "init", "session-id": SESSION, "events": ["x"]})
        stream = proxy.url.replace("127.0.0.1", "localhost") + f"/fulab/lab/stream/ws?session={SESSION}"
        own = proxy.https.replace("127.0.0.1", "localhost")
        with connect(stream, ssl=ca.client_context(), origin=own) as ws:
            assert orjson.loads(ws.recv(timeout=30))["type"] == "init"
        with connect(stream, ssl=ca.client_context(), origin="https://localhost") as ws:  # the port differs
            assert orjson.loads(ws.recv(timeout=30))["err"] == "unauthorized"
        with urllib.request.urlopen(own + "/fulab/lab/", context=ca.client_context(), timeout=30) as page:
            host = own.partition("://")[2]
            assert f"connect-src 'self' ws://{host} wss://{host};" in page.headers["content-security-policy"]


def test_the_healthz_bypass_is_closed_on_the_tls_port_too(tmp_path, ca, tokens):
    cert, key = ca.issue("live")
    with running(tmp_path / "remote", "--token-file", token_file(tmp_path, tokens), "--tls-port", "0",
                 "--tls-interface", "127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        with connect(server.url + UPLOAD, additional_headers=bearer(tokens["uploader"])) as ws:
            call(ws, {"type": "init", "session-id": SESSION, "events": ["x"]})
        stored = quote(str(server.root / f"{SESSION}.jsonl"))
        for query in (f"?path={stored}", f"?session={SESSION}"):
            with connect(f"wss://localhost:{server.tls_port}/healthz{query}", ssl=ca.client_context()) as ws:
                assert orjson.loads(ws.recv(timeout=30))["err"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd.code == 1008
