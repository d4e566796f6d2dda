"""
Access tokens and trusted proxies, on a real daemon with an independent client.
"""

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

import edn_format
import orjson
import pytest
from twisted.python import usage
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fulabd.netaddr import TrustedProxies, parse_network
from fulabd.tokens import fingerprint, load_tokens
from fulabd.tap import Options
from tests.fixtures import Daemon, sample_files, sample_lines

UPLOAD = "/fulab/lab/upload/ws"


def call(ws, message: dict) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=30))


def http_get(url: str, headers: dict | None = None):
    """(status, headers, body) of a GET, whatever the status."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def tokens():
    return {"alice": secrets.token_urlsafe(32), "unnamed": secrets.token_urlsafe(32)}


@pytest.fixture
def guarded(tmp_path, tokens):
    """A daemon that requires a token: one named `alice`, one without a name."""
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# lab tokens\n{tokens['alice']} alice\n\n{tokens['unnamed']}   # the CI box\n")
    token_file.chmod(0o600)
    server = Daemon(tmp_path / "remote", "--token-file", str(token_file)).start()
    yield server
    server.stop()


def test_token_file_lines_comments_and_names(tmp_path):
    token_file = tmp_path / "tokens"
    one, two = "a" * 20, "b" * 20
    token_file.write_text(f"# comment\n\n{one} Alice Smith\n  {two}  # no name\n")
    tokens = load_tokens(str(token_file))
    assert len(tokens) == 2
    assert tokens.name_of(one) == "Alice Smith"
    assert tokens.name_of(two) == fingerprint(two) and two not in fingerprint(two)
    assert tokens.name_of("a" * 19) is None and tokens.name_of(None) is None and tokens.name_of("") is None


@pytest.mark.parametrize("content, complaint", [
    ("", "holds no token"),
    ("# only a comment\n\n", "holds no token"),
    ("short alice\n", "at least 16 characters"),
    ("x" * 20 + " one\n" + "x" * 20 + " two\n", "already listed"),
])
def test_a_bad_token_file_stops_the_daemon_with_what_to_fix(tmp_path, content, complaint):
    token_file = tmp_path / "tokens"
    token_file.write_text(content)
    with pytest.raises(usage.UsageError, match=complaint):
        Options().parseOptions(["--token-file", str(token_file)])


def test_a_missing_token_file_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="cannot read the token file"):
        Options().parseOptions(["--token-file", str(tmp_path / "nothing")])


@pytest.mark.slow
def test_without_a_token_file_nothing_is_asked(daemon):
    status, _, _ = http_get(daemon.http + "/fulab/lab/sessions")
    assert status == 200
    with connect(daemon.url + UPLOAD) as ws:
        assert call(ws, {"type": "init", "session-id": "open", "events": ["x"]})["count"] == 1


@pytest.mark.parametrize("path", ["/fulab/lab/sessions", "/fulab/lab/status", "/metrics", "/"])
@pytest.mark.slow
def test_http_without_the_right_token_is_401(guarded, tokens, path):
    for headers in ({}, {"Authorization": "Bearer " + tokens["alice"] + "x"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        status, reply_headers, body = http_get(guarded.http + path, headers)
        assert status == 401, (path, headers)
        assert reply_headers["WWW-Authenticate"].startswith("Bearer")
        reply = orjson.loads(body)
        assert reply["err"] == "unauthorized" and "Authorization: Bearer" in reply["detail"]
    status, _, _ = http_get(guarded.http + path + "?token=wrong-" + tokens["alice"])
    assert status == 401


@pytest.mark.slow
def test_http_with_a_token_in_the_header_or_the_query(guarded, tokens):
    status, _, body = http_get(guarded.http + "/fulab/lab/sessions", {"Authorization": "Bearer " + tokens["alice"]})
    assert status == 200 and orjson.loads(body)["ok"] is True
    status, _, body = http_get(guarded.http + "/fulab/lab/sessions?token=" + tokens["unnamed"])
    assert status == 200 and orjson.loads(body)["ok"] is True
    status, _, _ = http_get(guarded.http + "/metrics", {"Authorization": "bearer " + tokens["unnamed"]})
    assert status == 200


@pytest.mark.slow
def test_healthz_needs_no_token(guarded):
    assert http_get(guarded.http + "/healthz")[:3:2] == (200, b"ok\n")


@pytest.mark.parametrize("path", [UPLOAD, "/upload/ws", "/fulab/lab/stream/ws?session=x", "/?path=/etc/passwd",
                                  "/no/such/endpoint"])
@pytest.mark.slow
def test_websocket_without_the_right_token_gets_unauthorized_then_1008(guarded, tokens, path):
    for headers in ({}, {"Authorization": "Bearer not-" + tokens["alice"]}):
        with connect(guarded.url + path, additional_headers=headers) as ws:
            reply = orjson.loads(ws.recv(timeout=30))
            assert reply["type"] == "error" and reply["err"] == "unauthorized", reply
            assert "?token=" in reply["detail"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008
    assert [p.name for p in guarded.root.iterdir()] in ([], [".index"])  # .index: the search index


@pytest.mark.slow
def test_the_token_name_is_recorded_as_the_uploader(guarded, tokens):
    K = edn_format.Keyword
    sample = sample_files()[0]
    lines = sample_lines(sample)
    with connect(guarded.url + UPLOAD, additional_headers={"Authorization": "Bearer " + tokens["alice"]}) as ws:
        reply = call(ws, {"type": "init", "session-id": "by-alice", "events": lines})
        assert reply["count"] == len(lines)
    with connect(guarded.url + UPLOAD + "?token=" + tokens["unnamed"]) as ws:
        assert call(ws, {"type": "init", "session-id": "by-ci", "events": lines[:3]})["count"] == 3
        assert call(ws, {"type": "par", "session-id": "by-ci", "par": {"title": "t"}})["type"] == "ack"
    listing = http_get(guarded.http + "/fulab/lab/sessions?token=" + tokens["alice"])[2]
    uploaders = {s["session-id"]: s.get("uploader") for s in orjson.loads(listing)["sessions"]}
    assert uploaders == {"by-alice": "alice", "by-ci": fingerprint(tokens["unnamed"])}
    guarded.stop()
    assert (guarded.root / "by-alice.jsonl").read_bytes() == sample.read_bytes()
    assert edn_format.loads((guarded.root / "by-alice.meta.edn").read_text())[K("uploader")] == "alice"
    assert edn_format.loads((guarded.root / "by-ci.meta.edn").read_text())[K("uploader")] == fingerprint(
        tokens["unnamed"])
    log = "\n".join(guarded.log)
    assert "upload connection open from 127.0.0.1 (uploader alice)" in log
    assert "can be read by other users" not in log
    for token in tokens.values():
        assert token not in log


@pytest.mark.slow
def test_refusals_are_logged_without_the_token(guarded, tokens):
    wrong = "not-" + tokens["alice"]
    http_get(guarded.http + "/fulab/lab/sessions?token=" + wrong)
    with connect(guarded.url + UPLOAD + "?token=" + wrong) as ws:
        ws.recv(timeout=30)
    guarded.wait_for_log(r"refused GET /fulab/lab/upload/ws from 127\.0\.0\.1: wrong token")
    guarded.stop()
    assert "refused GET /fulab/lab/sessions from 127.0.0.1: wrong token" in "\n".join(guarded.log)
    assert wrong not in "\n".join(guarded.log) and tokens["alice"] not in "\n".join(guarded.log)


@pytest.mark.parametrize("peer, forwarded, client", [
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),      # the client may forge the left part
    ("127.0.0.1", "203.0.113.7, 10.1.2.3", "203.0.113.7"),          # a second trusted proxy in front
    ("::ffff:127.0.0.1", "203.0.113.7", "203.0.113.7"),             # IPv4 on a dual-stack listener
    ("192.0.2.9", "203.0.113.7", "192.0.2.9"),                      # not a trusted proxy: the header is ignored
    ("127.0.0.1", "10.1.2.3", "10.1.2.3"),                          # only proxies: the first one
])
def test_trusted_proxy_address_rules(peer, forwarded, client):
    proxies = TrustedProxies([parse_network("127.0.0.1"), parse_network("10.0.0.0/8")])
    assert proxies.client_address(peer, forwarded) == client


def test_a_bad_trusted_proxy_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="not an IP address"):
        Options().parseOptions(["--trusted-proxy", "nginx.local"])


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.slow
def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy(tmp_path, trusted):
    args = ["--trusted-proxy", "127.0.0.1"] if trusted else []
    server = Daemon(tmp_path / "remote", *args).start()
    try:
        with connect(server.url + UPLOAD, additional_headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}) as ws:
            call(ws, {"type": "init", "session-id": "fwd", "events": ["x"]})
        expected = "203.0.113.7" if trusted else "127.0.0.1"
        server.wait_for_log(rf"upload of session fwd from {expected} started")
        server.wait_for_log(rf"upload connection from {expected} closed")
        hint = "ignoring X-Forwarded-For from 127.0.0.1, which is not a trusted proxy; if it is your proxy, pass " \
               "--trusted-proxy 127.0.0.1"
        assert any(hint in line for line in server.log) is not trusted
    finally:
        server.stop()


@pytest.mark.slow
def test_fulab_status_sends_the_token_and_says_when_one_is_needed(guarded, tokens):
    def fulab_status(*args, token=None):
        env = {k: v for k, v in os.environ.items() if k != "FULAB_TOKEN"} | ({"FULAB_TOKEN": token} if token else {})
        return subprocess.run([sys.executable, "-m", "fulabd.admin", "status", "--url", guarded.http, *args],
                              capture_output=True, text=True, env=env, timeout=60)

    refused = fulab_status()
    assert refused.returncode == 1 and "pass --token TOKEN or set FULAB_TOKEN" in refused.stderr
    from_env = fulab_status(token=tokens["alice"])
    assert from_env.returncode == 0 and "running: True" in from_env.stdout
    assert fulab_status(f"--token={tokens['unnamed']}").returncode == 0  # (a token may begin with "-")


@pytest.mark.slow
def test_a_token_file_others_can_read_is_warned_about(tmp_path, tokens):
    token_file = tmp_path / "tokens"
    token_file.write_text(tokens["alice"] + "\n")
    token_file.chmod(0o644)
    server = Daemon(tmp_path / "remote", "--token-file", str(token_file)).start()
    try:
        server.wait_for_log(rf"the token file {token_file} can be read by other users; chmod 600 it")
    finally:
        server.stop()
