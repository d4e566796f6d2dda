"""
`fulab doctor` against the real daemon, direct TLS and the real nginx, with
each failure made to happen for real.
"""

import re

import pytest

from fulabd.admin import main
from tests.fixtures import Daemon, Nginx


def doctor(capsys, url: str, *args: str) -> tuple[int, list[str]]:
    code = main(["doctor", url, "--timeout", "10", *args])
    return code, capsys.readouterr().out.splitlines()


def failure(lines: list[str]) -> str:
    """The one [FAIL] line, which must be the last."""
    failed = [line for line in lines if line.startswith("[FAIL]")]
    assert len(failed) == 1 and lines[-1] == failed[0], lines
    return failed[0]


@pytest.fixture
def tls_daemon(tmp_path, ca):
    cert, key = ca.issue("direct")
    server = Daemon(tmp_path / "remote", "--tls-port", "0", "--tls-interface", "127.0.0.1",
                    "--tls-cert", str(cert), "--tls-key", str(key)).start()
    yield server
    server.stop()


def tls_daemon_with(tmp_path, ca, **issue) -> Daemon:
    cert, key = ca.issue("bad", **issue)
    return Daemon(tmp_path / "remote", "--tls-port", "0", "--tls-interface", "127.0.0.1",
                  "--tls-cert", str(cert), "--tls-key", str(key)).start()


@pytest.mark.slow
def test_all_green_over_plain_ws(daemon, capsys):
    code, lines = doctor(capsys, daemon.url + "/fulab/lab/upload/ws")
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines[1:]] == [
        "[ok] name resolution", "[ok] TCP connect", "[ok] HTTP upgrade", "[ok] ping/pong",
        "[ok] upload path /upload/ws", "[ok] listings", "[ok] status", "all checks passed"]


@pytest.mark.slow
def test_all_green_over_direct_tls(tls_daemon, ca, capsys):
    code, lines = doctor(capsys, f"wss://localhost:{tls_daemon.tls_port}/fulab/lab/upload/ws",
                         "--cafile", str(ca.root_path))
    assert code == 0, lines
    tls_line = next(line for line in lines if "TLS handshake" in line)
    assert re.match(r"\[ok\] TLS handshake: certificate for localhost, 127\.0\.0\.1 valid 29 more days "
                    r"\(until \S+\), chain of 2, TLSv1\.3$", tls_line), tls_line
    assert any(line.startswith("[ok] status:") and "tls:0:interface=127.0.0.1" in line for line in lines)


@pytest.mark.slow
def test_all_green_through_nginx(nginx, ca, capsys):
    code, lines = doctor(capsys, nginx.url + "/fulab/lab/upload/ws", "--cafile", str(ca.root_path))
    assert code == 0, lines
    assert any(line.startswith("[ok] TLS handshake: certificate for localhost") for line in lines)
    assert "[ok] upload path /upload/ws: accepts uploads" in "\n".join(lines)


@pytest.mark.slow
def test_daemon_down(tmp_path, capsys):
    server = Daemon(tmp_path / "remote").start()
    server.stop()
    code, lines = doctor(capsys, server.url + "/fulab/lab/upload/ws")
    assert code == 1
    assert failure(lines).startswith(f"[FAIL] TCP connect: 127.0.0.1:{server.port} refused the connection: "
                                     "nothing listens there. Start the daemon (systemctl start fulabd)")


@pytest.mark.slow
def test_wrong_path_at_the_daemon(daemon, capsys):
    code, lines = doctor(capsys, daemon.url + "/fulab/upload/ws")
    assert code == 1
    assert failure(lines) == ("[FAIL] ping/pong: the daemon has no WebSocket endpoint at /fulab/upload/ws: "
                              "uploads go to /fulab/lab/upload/ws")


@pytest.mark.slow
def test_wrong_path_through_nginx_is_a_404(nginx, ca, capsys):
    code, lines = doctor(capsys, nginx.url + "/lab/upload/ws", "--cafile", str(ca.root_path))
    assert code == 1
    assert failure(lines).startswith("[FAIL] HTTP upgrade: HTTP/1.1 404 Not Found — nothing is served at "
                                     "/lab/upload/ws on this host")


@pytest.mark.slow
def test_nginx_without_the_old_paths_warns_about_upload_ws(tmp_path, daemon, ca, capsys):
    cert, key = ca.issue("nginx")
    proxy = Nginx(tmp_path / "nginx-plain", daemon.port, cert, key).start()
    try:
        code, lines = doctor(capsys, proxy.url + "/fulab/lab/upload/ws", "--cafile", str(ca.root_path))
    finally:
        proxy.stop()
    assert code == 0, lines
    assert ("[warn] upload path /upload/ws: HTTP/1.1 404 Not Found — nothing is served at /upload/ws"
            in "\n".join(lines))


@pytest.mark.slow
def test_nginx_dropping_the_upgrade_headers(tmp_path, daemon, ca, capsys):
    """The usual nginx mistake: no Upgrade/Connection headers, so the daemon sees a plain GET."""
    cert, key = ca.issue("nginx")
    proxy = Nginx(tmp_path / "nginx-no-upgrade", daemon.port, cert, key, dropping=("Upgrade", "Connection")).start()
    try:
        code, lines = doctor(capsys, proxy.url + "/fulab/lab/upload/ws", "--cafile", str(ca.root_path))
    finally:
        proxy.stop()
    assert code == 1
    assert failure(lines).startswith("[FAIL] HTTP upgrade: HTTP/1.1 426 Upgrade Required — the daemon got the "
                                     "request without its Upgrade header: a proxy in between drops it. nginx needs")


@pytest.mark.slow
def test_nginx_up_backend_down_is_a_502(nginx, daemon, ca, capsys):
    daemon.stop()
    code, lines = doctor(capsys, nginx.url + "/fulab/lab/upload/ws", "--cafile", str(ca.root_path))
    assert code == 1
    assert failure(lines).startswith("[FAIL] HTTP upgrade: HTTP/1.1 502 Bad Gateway — the proxy (nginx) is up but "
                                     "the daemon behind it is not answering: start it (systemctl start fulabd)")


@pytest.mark.slow
def test_expired_certificate(tmp_path, ca, capsys):
    server = tls_daemon_with(tmp_path, ca, days=-3, start_days=-60)
    try:
        server.wait_for_log(r"TLS certificate localhost in \S+ expired on .*: clients will refuse it")
        code, lines = doctor(capsys, f"wss://localhost:{server.tls_port}/", "--cafile", str(ca.root_path))
    finally:
        server.stop()
    assert code == 1
    assert re.match(r"\[FAIL\] TLS handshake: the certificate for localhost, 127\.0\.0\.1 expired [34] days ago "
                    r"\(\S+\): renew it \(certbot renew\)", failure(lines)), lines


@pytest.mark.slow
def test_certificate_for_another_host(tmp_path, ca, capsys):
    server = tls_daemon_with(tmp_path, ca, names=("lab.example.org",))
    try:
        code, lines = doctor(capsys, f"wss://localhost:{server.tls_port}/", "--cafile", str(ca.root_path))
    finally:
        server.stop()
    assert code == 1
    assert failure(lines) == ("[FAIL] TLS handshake: the certificate is for lab.example.org, not localhost: use a "
                              "URL with one of those names, or get a certificate for localhost")


@pytest.mark.slow
def test_untrusted_chain_says_to_pass_the_ca(tls_daemon, capsys):
    code, lines = doctor(capsys, f"wss://localhost:{tls_daemon.tls_port}/")
    assert code == 1
    assert "served chain of 2" in failure(lines) and "--cafile" in failure(lines)


@pytest.mark.slow
def test_plain_ws_to_the_tls_port(tls_daemon, capsys):
    code, lines = doctor(capsys, f"ws://127.0.0.1:{tls_daemon.tls_port}/")
    assert code == 1
    assert failure(lines).startswith("[FAIL] HTTP upgrade: ") and "use wss://" in failure(lines)


def test_unresolvable_name(capsys):
    code, lines = doctor(capsys, "wss://fulab-doctor-test.invalid/")
    assert code == 1
    assert failure(lines).startswith("[FAIL] name resolution: cannot resolve fulab-doctor-test.invalid")


@pytest.mark.slow
def test_leaf_without_its_chain_says_to_serve_fullchain(tmp_path, ca, capsys):
    """`cert.pem` (the leaf alone) instead of `fullchain.pem`: clients cannot reach the trusted root."""
    cert, key = ca.issue("leaf-only")
    leaf_only = cert.with_name("cert.pem")
    leaf_only.write_text(cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    server = Daemon(tmp_path / "remote", "--tls-port", "0", "--tls-interface", "127.0.0.1",
                    "--tls-cert", str(leaf_only), "--tls-key", str(key)).start()
    try:
        code, lines = doctor(capsys, f"wss://localhost:{server.tls_port}/", "--cafile", str(ca.root_path))
    finally:
        server.stop()
    assert code == 1
    assert failure(lines).startswith("[FAIL] TLS handshake: unable to get local issuer certificate (served chain "
                                     "of 1): the chain is incomplete or its issuer is not trusted: serve fullchain.pem")


def test_not_a_websocket_url(capsys):
    code, lines = doctor(capsys, "ftp://lab.example.org/")
    assert code == 1
    assert failure(lines) == ("[FAIL] URL: ftp://lab.example.org/ is not a ws:// or wss:// URL, "
                              "e.g. wss://lab.example.org:5057/fulab/lab/upload/ws")
    code, lines = doctor(capsys, "wss://lab.example.org:port/")
    assert failure(lines) == "[FAIL] URL: wss://lab.example.org:port/ has no valid port number (1-65535)"


@pytest.mark.slow
def test_token(tmp_path, capsys):
    token = "doctor-test-token-0123456789"
    (tmp_path / "tokens").write_text(f"{token} laptop\n")
    server = Daemon(tmp_path / "remote", "--token-file", str(tmp_path / "tokens")).start()
    try:
        missing = doctor(capsys, server.url + "/fulab/lab/upload/ws")
        wrong = doctor(capsys, server.url + "/fulab/lab/upload/ws", "--token", "not-the-token-0123456789")
        right = doctor(capsys, server.url + "/fulab/lab/upload/ws", "--token", token)
    finally:
        server.stop()
    assert missing[0] == 1 and failure(missing[1]) == (
        "[FAIL] ping/pong: the daemon wants an access token: pass it with --token TOKEN (the laptop's FULAB_TOKEN)")
    assert wrong[0] == 1 and failure(wrong[1]) == (
        "[FAIL] ping/pong: the daemon refused this token: pass the right one with --token (the laptop's FULAB_TOKEN)")
    assert right[0] == 0, right[1]


@pytest.mark.slow
def test_token_passes_through_nginx(tmp_path, ca, capsys):
    token = "doctor-test-token-0123456789"
    (tmp_path / "tokens").write_text(f"{token} laptop\n")
    server = Daemon(tmp_path / "remote", "--token-file", str(tmp_path / "tokens"),
                    "--trusted-proxy", "127.0.0.1").start()
    cert, key = ca.issue("nginx")
    proxy = Nginx(tmp_path / "nginx", server.port, cert, key).start()
    try:
        code, lines = doctor(capsys, proxy.url + "/fulab/lab/upload/ws", "--cafile", str(ca.root_path),
                             "--token", token)
        server.wait_for_log(r"upload connection open from 127\.0\.0\.1 \(uploader laptop\)")
    finally:
        proxy.stop()
        server.stop()
    assert code == 0, lines
