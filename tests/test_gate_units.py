"""
The gate in memory: the token file's scopes, the decision on request heads,
origins, and the site answering a refused head before reading its body
(over `StringTransport`, with a `Clock` for the head timeout).
"""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.test.requesthelper import DummyRequest

from fulabd import endpoints, tokens, web
from fulabd.access import ConnectionLimits, Decision, Gate, Head
from fulabd.catalog import NotInside, open_inside
from fulabd.channel import content_security_policy
from fulabd.hub import Hub
from fulabd.local import LocalSources, index_file
from fulabd.netaddr import TrustedProxies, parse_network
from fulabd.origins import Origins, normalize
from fulabd.tap import Options
from fulabd.upload import UploadFactory

ALICE, READER = "a" * 20, "r" * 20


def gate(**kw) -> Gate:
    named = {ALICE: tokens.Principal("alice", frozenset({"upload"})),
             READER: tokens.Principal("reader", frozenset({"read"}))}
    return Gate(tokens.Tokens(named), ui_files=frozenset({"/fulab/lab/", "/fulab/lab/app.js"}), **kw)


def head(method=b"GET", uri=b"/fulab/lab/sessions", peer="127.0.0.1", secure=False, **headers) -> Head:
    return Head(method, uri, {k.replace("_", "-"): v for k, v in headers.items()}, peer, secure)


def test_token_lines_with_names_and_scopes(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{'a' * 20} Alice Smith upload,read\n{'b' * 20} ci\n{'c' * 20} review\n{'d' * 20}\n")
    loaded = tokens.load_tokens(str(path))
    assert loaded.principal_of("a" * 20) == tokens.Principal("Alice Smith", frozenset({"upload", "read"}))
    assert loaded.principal_of("b" * 20) == tokens.Principal("ci", frozenset(tokens.SCOPES))  # no scopes: all
    assert loaded.principal_of("c" * 20).name == tokens.fingerprint("c" * 20)  # only scopes: unnamed
    assert loaded.principal_of("d" * 20).scopes == frozenset(tokens.SCOPES)


def test_an_unknown_scope_in_a_list_is_an_error(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{'a' * 20} alice upload,reed\n")
    with pytest.raises(tokens.TokenFileError, match="unknown scope 'reed'"):
        tokens.load_tokens(str(path))


def test_admin_may_everything():
    admin = tokens.Principal("root", frozenset({"admin"}))
    assert all(admin.may(scope) for scope in tokens.SCOPES)


@pytest.mark.parametrize("request_head, code, err", [
    (head(), 401, "unauthorized"),
    (head(authorization="Bearer " + "x" * 20), 401, "unauthorized"),
    (head(uri=b"/fulab/lab/sessions?token=" + READER.encode()), 0, ""),
    (head(authorization="Bearer " + ALICE), 403, "forbidden"),                    # upload only: no read
    (head(uri=b"/healthz"), 0, ""),
    (head(uri=b"/healthz?path=/x", upgrade="websocket"), 401, "unauthorized"),     # the open door opens no socket
    (head(uri=b"/fulab/lab/app.js"), 0, ""),                                       # the UI shell
    (head(method=b"POST", uri=b"/fulab/lab/app.js"), 401, "unauthorized"),
    (head(uri=b"/metrics", authorization="Bearer " + READER), 403, "forbidden"),
    (head(uri=b"/fulab/lab/upload/ws", upgrade="websocket", authorization="Bearer " + ALICE), 0, ""),
    (head(uri=b"/?path=/x", upgrade="websocket", authorization="Bearer " + ALICE), 403, "forbidden"),
    (head(uri=b"/fulab/lab/stream/ws", upgrade="websocket", authorization="Bearer " + READER,
          origin="http://evil.example", host="127.0.0.1:5056"), 403, "unauthorized"),
    (head(authorization="Bearer " + READER, content_length="1"), 413, "too-large"),
    (head(authorization="Bearer " + READER, transfer_encoding="chunked"), 413, "too-large"),
    (head(authorization="Bearer " + READER, content_length="-1"), 400, "bad-request"),
    # Spelled as twisted.web routes them: %-decoded segments, and a leaf answering below itself.
    (head(uri=b"/%6detrics", authorization="Bearer " + READER), 403, "forbidden"),
    (head(uri=b"/metrics/x", authorization="Bearer " + READER), 403, "forbidden"),
    (head(uri=b"/%68ealthz"), 0, ""),
    (head(uri=b"/fulab%2flab%2fapp.js"), 401, "unauthorized"),   # routes to nothing: not the UI's file
    (head(uri=b"/%6Detrics/%2F", authorization="Bearer " + READER), 403, "forbidden"),  # the metrics leaf still
    (head(uri=b"Xmetrics", authorization="Bearer " + READER), 403, "forbidden"),  # Twisted drops the first byte
    (head(method=b"POST", uri=b"Xfulab/lab/sessions/s1/pars", authorization="Bearer " + READER,
          content_type="application/json", content_length="2"), 403, "forbidden"),   # a PAR POST all the same
    (head(method=b"POST", uri=b"/fulab/lab/sessions/a%2Fb/pars", authorization="Bearer " + READER,
          content_type="application/json", content_length="2"), 403, "forbidden"),   # a raw id with a slash
    (head(uri=b"/fulab/lab/app.js#/../../sessions"), 401, "unauthorized"),  # no fragment in a request line
    (head(uri=b"/fulab/lab/%73tream/ws?session=s", upgrade="websocket", authorization="Bearer " + ALICE),
     403, "forbidden"),
])
def test_decisions(request_head, code, err):
    decision = gate().decide(request_head)
    assert (decision.code, decision.err) == (code, err), decision


def test_par_posts_need_review_json_and_a_small_body():
    reviewer = tokens.Principal("rev", frozenset({"review"}))
    g = Gate(tokens.Tokens({"v" * 20: reviewer}))
    post = dict(method=b"POST", uri=b"/fulab/lab/sessions/s1/pars", authorization="Bearer " + "v" * 20)
    assert g.decide(head(**post, content_type="application/json; charset=utf-8", content_length="10")).code == 0
    assert g.decide(head(**post, content_type="text/plain", content_length="10")).code == 415
    too_big = str(endpoints.PAR_BODY_LIMIT + 1)
    assert g.decide(head(**post, content_type="application/json", content_length=too_big)).code == 413
    assert g.decide(head(**post, content_type="application/json", transfer_encoding="chunked")).code == 411


@pytest.mark.parametrize("origin, headers, peer, secure, allowed", [
    ("http://127.0.0.1:5056", {"host": "127.0.0.1:5056"}, "127.0.0.1", False, True),
    ("https://127.0.0.1:5056", {"host": "127.0.0.1:5056"}, "127.0.0.1", False, False),   # another scheme
    ("https://lab.example.org", {"host": "lab.example.org:443"}, "127.0.0.1", True, True),
    ("https://lab.example.org", {"host": "127.0.0.1:5056", "x-forwarded-host": "lab.example.org",
                                 "x-forwarded-proto": "https"}, "10.0.0.1", False, True),  # trusted proxy
    ("https://lab.example.org", {"host": "127.0.0.1:5056", "x-forwarded-host": "lab.example.org",
                                 "x-forwarded-proto": "https"}, "192.0.2.1", False, False),  # untrusted peer
    ("https://other.example:8443", {"host": "127.0.0.1"}, "127.0.0.1", False, True),   # --allowed-origin
    ("null", {"host": "127.0.0.1"}, "127.0.0.1", False, False),
])
def test_origins(origin, headers, peer, secure, allowed):
    origins = Origins(TrustedProxies([parse_network("10.0.0.0/8")]), ["https://other.example:8443"])
    assert origins.allowed(Head(b"POST", b"/", {"origin": origin, **headers}, peer, secure)) is allowed


@pytest.mark.parametrize("headers, peer, answered", [
    ({"host": "127.0.0.1:5056"}, "127.0.0.1", True),
    ({"host": "[::1]:5056"}, "::1", True),
    ({"host": "localhost:5056"}, "127.0.0.1", True),
    ({"host": "lab.localhost"}, "127.0.0.1", True),
    ({}, "127.0.0.1", True),                                             # no Host: no browser
    ({"host": "other.example:8443"}, "127.0.0.1", True),                 # --allowed-origin's host
    ({"host": "rebind.evil.example:5056"}, "127.0.0.1", False),          # a name pointed at this machine
    ({"host": "rebind.evil.example:5056", "origin": "http://rebind.evil.example:5056"}, "127.0.0.1", False),
    ({"host": "evil_example"}, "127.0.0.1", False),                      # not even a host name
    ({"host": "127.0.0.1:5056", "x-forwarded-host": "lab.example.org"}, "10.0.0.1", False),  # via the proxy
    ({"host": "127.0.0.1:5056", "x-forwarded-host": "lab.example.org", "x-forwarded-proto": "https"}, "10.0.0.1",
     True),  # over TLS: the certificate names the host, a rebound name would not match it
    ({"host": "127.0.0.1:5056", "x-forwarded-host": "lab.example.org"}, "192.0.2.1", True),  # not trusted
])
def test_without_tokens_only_an_address_localhost_or_an_allowed_host_is_answered(headers, peer, answered):
    """DNS rebinding: a page whose name resolves to 127.0.0.1 is the browser's own origin there, and may read
    what a token-less lab answers; with tokens it has none to send."""
    proxies = TrustedProxies([parse_network("10.0.0.0/8")])
    open_lab = Gate(None, proxies, origins=Origins(proxies, ["https://other.example:8443"]))
    decision = open_lab.decide(Head(b"GET", b"/fulab/lab/sessions", headers, peer, False))
    assert (decision.code == 0) is answered, decision
    if not answered:
        assert (decision.code, decision.err) == (403, "forbidden") and "--allowed-origin" in decision.detail
    assert gate().decide(Head(b"GET", b"/healthz", headers, peer, False)).code == 0  # tokens: no such check


def test_normalize_drops_default_ports_and_refuses_non_origins():
    assert normalize("HTTPS://Lab.Example.org:443") == "https://lab.example.org"
    assert normalize("http://[::1]:80") == "http://[::1]"
    assert normalize("https://lab.example.org/path") is None and normalize("file://x") is None
    assert normalize("http://a; script-src *") is None  # a Host header cannot write into the CSP


def test_the_csp_names_the_host_the_client_used_or_none():
    assert b"connect-src 'self' ws://127.0.0.1:5056 wss://127.0.0.1:5056;" in content_security_policy(
        "http://127.0.0.1:5056")
    assert b"connect-src 'self';" in content_security_policy(None)


# -- the site over an in-memory transport -------------------------------------------------------

class Recorder(resource.Resource):
    isLeaf = True
    rendered = 0

    def render(self, request):
        Recorder.rendered += 1
        return b"served"


def connection(site, peer="127.0.0.1"):
    protocol = site.buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def site(clock, gate_=None, head_timeout=5.0):
    root = resource.Resource()
    root.putChild(b"fulab", Recorder())
    return web.LabSite(root, gate_ or gate(), head_timeout=head_timeout, reactor=clock)


def test_a_refused_head_is_answered_before_its_body_and_the_connection_closes():
    clock = Clock()
    protocol, transport = connection(site(clock))
    protocol.dataReceived(b"POST /fulab HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n"
                          b"Expect: 100-continue\r\n\r\n" + b"x" * 1000)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in answer
    assert transport.disconnecting and Recorder.rendered == 0
    request = protocol.requests[-1] if protocol.requests else None
    assert request is None or request.content.getvalue() == b""


def test_a_body_not_complete_within_the_timeout_is_dropped_and_one_in_time_is_served(monkeypatch):
    monkeypatch.setattr(Recorder, "rendered", 0)  # counted here, and put back for the tests that count none
    clock = Clock()
    lab = site(clock, Gate(None), head_timeout=5.0)
    head = (b"POST /fulab/lab/sessions/s1/pars HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")
    protocol, transport = connection(lab)
    protocol.dataReceived(head)
    for _ in range(49):  # a byte every 0.1 s: 4.9 s, 49 of the 100
        protocol.dataReceived(b"x")
        clock.advance(0.1)
    assert not transport.disconnecting
    clock.advance(0.2)  # past 5 s from the head
    assert transport.disconnecting and Recorder.rendered == 0 and lab.gate.refused["slow-body"] == 1
    protocol, transport = connection(lab)
    protocol.dataReceived(head + b"x" * 100)
    clock.advance(5.0)
    assert Recorder.rendered == 1 and transport.value().startswith(b"HTTP/1.1 200 ")
    assert lab.gate.refused["slow-body"] == 1  # its body's deadline was called off


def test_a_head_not_complete_within_the_timeout_is_dropped_however_it_trickles():
    clock = Clock()
    protocol, transport = connection(site(clock, head_timeout=5.0))
    trickle = b"GET /fulab HTTP/1.1\r\nX-Pad: " + b"a" * 100
    for byte in trickle[:45]:  # a byte every 0.1 s: 4.5 s
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.1)
    assert not transport.disconnecting
    for byte in trickle[45:]:
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.1)
    assert transport.disconnecting and Recorder.rendered == 0  # the 5 s deadline: no byte moved it


def test_a_tls_handshake_on_the_plain_port_is_answered_at_once_in_plain_http():
    clock = Clock()
    lab = site(clock)
    protocol, transport = connection(lab)
    protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
    assert transport.value().startswith(b"HTTP/1.1 400 ") and b"use ws:// or http://" in transport.value()
    assert transport.disconnecting and Recorder.rendered == 0
    clock.advance(5.0)
    assert lab.gate.refused == {"tls-on-plain-port": 1}  # its head's deadline was called off
    protocol, transport = connection(lab)
    protocol.dataReceived(b"GET /fulab HTTP/1.1\r\n")
    protocol.dataReceived(b"\x16\r\n\r\n")  # only a connection's first byte tells TLS
    assert lab.gate.refused["tls-on-plain-port"] == 1


def test_waiting_connections_are_capped_and_released():
    clock = Clock()
    limits = ConnectionLimits(total=2, per_address=0)
    lab = site(clock, gate(limits=limits))
    first, _ = connection(lab)
    connection(lab)
    _, third = connection(lab)  # a third silent connection: aborted at once
    assert third.disconnected and lab.gate.refused["over-limit"] == 1 and sum(limits.waiting.values()) == 2
    first.connectionLost(Failure(ConnectionDone()))
    assert sum(limits.waiting.values()) == 1


# -- the viewer serves the file it checked ------------------------------------------------------

def test_open_inside_checks_the_file_opened_not_the_name(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "secret.jsonl"
    root.mkdir()
    outside.write_bytes(b'{"secret":1}\n')
    (root / "real.jsonl").write_bytes(b"{}\n")
    (root / "inner.jsonl").symlink_to(root / "real.jsonl")
    (root / "escape.jsonl").symlink_to(outside)
    with open_inside(str(root / "inner.jsonl"), [str(root)]) as f:
        assert f.read() == b"{}\n"
    with pytest.raises(NotInside):
        open_inside(str(root / "escape.jsonl"), [str(root)])


def test_a_local_session_swapped_for_a_symlink_after_indexing_serves_nothing(tmp_path):
    root, outside = tmp_path / "codex", tmp_path / "secret.jsonl"
    root.mkdir()
    path = root / "rollout.jsonl"
    path.write_bytes(b'{"type":"session_meta"}\n{"n":1}\n')
    outside.write_bytes(b'{"secret":"a"}\n{"secret":"b"}\n')
    sources = LocalSources([("codex", str(root))], Hub(), Clock())
    session = index_file(str(path), "codex")
    assert sources.read_lines(session, 0) == [b'{"type":"session_meta"}', b'{"n":1}']
    path.unlink()
    path.symlink_to(outside)  # the swap, after the catalog's check of the name
    assert sources.read_lines(session, 0) == []


def test_a_bad_allowed_origin_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="is not an origin"):
        Options().parseOptions(["--allowed-origin", "lab.example.org"])
    options = Options()
    options.parseOptions(["--allowed-origin", "https://lab.example.org", "--allowed-origin", "http://b:8080"])
    assert options["allowed-origins"] == ["https://lab.example.org", "http://b:8080"]


def test_the_dispatch_serves_only_the_endpoint_the_gate_judged():
    """Should a head ever read one way to the gate and another to the dispatch, neither request is served."""
    dispatch = web.WebSocketDispatch(UploadFactory(store=None, clock=Clock(), max_message_size=1, admit=None))
    dispatch.putChild(b"fulab", Recorder())

    def routed(path: bytes, judged: endpoints.Endpoint, upgrade: bool):
        request = DummyRequest(path.split(b"/")[1:])
        request.uri = path
        if upgrade:
            request.requestHeaders.setRawHeaders(b"upgrade", [b"websocket"])
        request.decision = Decision(tokens.ANYONE, "127.0.0.1", judged)
        return dispatch.getChildWithDefault(request.postpath[0], request)

    assert isinstance(routed(b"/fulab/lab/app.js", endpoints.UI_FILE, upgrade=False), Recorder)
    assert isinstance(routed(b"/fulab/lab/app.js", endpoints.STREAM_SOCKET, upgrade=False), web.Ambiguous)
    assert isinstance(routed(b"/fulab/lab/upload/ws", endpoints.UI_FILE, upgrade=True), web.Ambiguous)
    assert routed(b"/fulab/lab/upload/ws", endpoints.UPLOAD_SOCKET, upgrade=True) is dispatch.upload
    assert routed(b"/fulab/lab/upload/ws", endpoints.UNKNOWN_SOCKET, upgrade=True) is dispatch.refused
