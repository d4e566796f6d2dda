"""
The daemon serving TLS itself: the chain is served, and certificates are
re-read on SIGHUP or when the files change without dropping connections.
"""

import os
import re
import shutil
import signal
import socket
import time

import orjson
import pytest
from twisted.internet.task import Clock
from twisted.python import usage
from websockets.sync.client import connect

from fulabd import admin
from fulabd.tap import Options
from fulabd.tls import ReloadingCertificate
from tests.fixtures import Daemon, get_json, sample_files, sample_lines


def tls_daemon(tmp_path, ca, *args):
    cert, key = ca.issue("live")
    return Daemon(tmp_path / "remote", "--tls-port", "0", "--tls-interface", "127.0.0.1",
                  "--tls-cert", str(cert), "--tls-key", str(key), *args).start()


@pytest.fixture
def daemon_tls(tmp_path, ca):
    server = tls_daemon(tmp_path, ca, "--tls-check-interval", "0.2", "--restart-interval", "0.2")
    yield server
    server.stop()


def served_subject(ws) -> str:
    """The common name of the certificate the server presented on this connection."""
    certificate = ws.socket.getpeercert()
    return dict(pair[0] for pair in certificate["subject"])["commonName"]


def ping(ws) -> dict:
    ws.send('{"type":"ping"}')
    return orjson.loads(ws.recv(timeout=30))


def replace_certificate(ca, live, name: str):
    """What certbot does on renewal: new files in place of the old ones."""
    cert, key = ca.issue(name, names=(name, "127.0.0.1"))
    shutil.copy(key, live / "privkey.pem.new")
    shutil.copy(cert, live / "fullchain.pem.new")
    os.replace(live / "privkey.pem.new", live / "privkey.pem")
    os.replace(live / "fullchain.pem.new", live / "fullchain.pem")


@pytest.mark.slow
def test_upload_over_wss_with_the_chain_served(daemon_tls, ca):
    sample = sample_files()[0]
    url = f"wss://localhost:{daemon_tls.tls_port}/fulab/lab/upload/ws"
    with connect(url, ssl=ca.client_context(), max_size=None) as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": "tls", "events": sample_lines(sample)}).decode())
        reply = orjson.loads(ws.recv(timeout=30))
    assert reply["count"] == len(sample_lines(sample))
    assert (daemon_tls.root / "tls.jsonl").read_bytes() == sample.read_bytes()
    listing = get_json(f"https://localhost:{daemon_tls.tls_port}/fulab/lab/sessions", context=ca.client_context())
    assert [entry["id"] for entry in listing["sessions"]] == ["tls"]


@pytest.mark.slow
def test_status_lists_every_listener_and_the_certificate(daemon_tls):
    status = get_json(daemon_tls.http + "/fulab/lab/status")
    endpoints = [listener["endpoint"] for listener in status["listeners"]]
    assert endpoints == ["tcp:0:interface=127.0.0.1", "tls:0:interface=127.0.0.1"]
    assert all(listener["listening"] for listener in status["listeners"])
    assert (status["tls"]["subject"], status["tls"]["chain"]) == ("localhost", 2)


@pytest.mark.slow
def test_status_command_shows_the_certificate(daemon_tls, capsys):
    assert admin.main(["status", "--url", daemon_tls.http]) == 0
    out = capsys.readouterr().out
    assert "listener: tls:0:interface=127.0.0.1 listening" in out
    assert re.search(r"tls: localhost \(chain of 2\) valid until \S+, 29 days left, from \S+fullchain\.pem", out)


def test_listen_is_repeatable_and_tls_options_go_together(ca):
    cert, key = ca.issue("live")
    options = Options()
    options.parseOptions(["--listen", "unix:/run/a.sock", "--listen", "tcp:6000", "--tls-port", "5057",
                          "--tls-cert", str(cert), "--tls-key", str(key)])
    assert options["endpoints"] == ["tcp:5056:interface=127.0.0.1", "unix:/run/a.sock", "tcp:6000"]
    assert (options["tls-port"], options["tls-interface"]) == (5057, "0.0.0.0")
    for partial in (["--tls-port", "5057"], ["--tls-cert", str(cert), "--tls-key", str(key)]):
        with pytest.raises(usage.UsageError, match="go together"):
            Options().parseOptions(partial)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.slow
def test_tls_on_ipv6(tmp_path, ca):
    cert, key = ca.issue("v6", names=("localhost", "::1"))
    server = Daemon(tmp_path / "remote", "--tls-port", "0", "--tls-interface", "::1",
                    "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        with connect(f"wss://[::1]:{server.tls_port}/fulab/lab/upload/ws", ssl=ca.client_context()) as ws:
            assert ping(ws)["type"] == "pong"
    finally:
        server.stop()


@pytest.mark.slow
def test_supervisor_self_probe_passes_on_the_tls_port(daemon_tls):
    """The probe speaks TLS to the TLS port: it succeeds and never re-listens."""
    for _ in range(100):  # a successful probe leaves no event but its count: poll, bounded
        status = get_json(daemon_tls.http + "/fulab/lab/status")
        if all(listener["probes"] >= 2 for listener in status["listeners"]):
            break
        time.sleep(0.1)
    tls_listener = status["listeners"][1]
    assert tls_listener["probes"] >= 2, status
    assert (tls_listener["failures"], tls_listener["restarts"]) == (0, 0)


@pytest.mark.slow
def test_listen_adds_any_endpoint(tmp_path):
    socket_path = tmp_path / "fulab.sock"
    server = Daemon(tmp_path / "remote", "--listen", f"unix:{socket_path}").start()
    try:
        server.wait_for_log(r"listening on unix:")
        status = get_json(server.http + "/fulab/lab/status")
        assert [listener["endpoint"] for listener in status["listeners"]] == [
            "tcp:0:interface=127.0.0.1", f"unix:{socket_path}"]
        assert all(listener["listening"] for listener in status["listeners"])
        from websockets.sync.client import unix_connect
        with unix_connect(str(socket_path), "ws://localhost/fulab/lab/upload/ws") as ws:
            assert ping(ws)["type"] == "pong"
    finally:
        server.stop()


@pytest.mark.parametrize("trigger", ["SIGHUP", "file change"])
@pytest.mark.slow
def test_certificate_reload_keeps_open_connections(tmp_path, ca, trigger):
    server = tls_daemon(tmp_path, ca, "--tls-check-interval", "0.2" if trigger == "file change" else "0")
    try:
        url = f"wss://127.0.0.1:{server.tls_port}/fulab/lab/upload/ws"
        with connect(url, ssl=ca.client_context()) as old:
            assert served_subject(old) == "localhost"
            replace_certificate(ca, ca.directory / "live", "renewed.example")
            if trigger == "SIGHUP":
                server.process.send_signal(signal.SIGHUP)
            server.wait_for_log(r"TLS certificate reloaded .*renewed\.example")
            with connect(url, ssl=ca.client_context()) as new:
                assert served_subject(new) == "renewed.example"
                assert ping(new)["type"] == "pong"
            assert ping(old)["type"] == "pong"
            assert served_subject(old) == "localhost"
        assert server.process.poll() is None
    finally:
        server.stop()
        print("\n".join(server.log))  # shown by pytest only when the test failed


@pytest.mark.slow
def test_a_broken_renewal_keeps_the_old_certificate(tmp_path, ca):
    server = tls_daemon(tmp_path, ca, "--tls-check-interval", "0")
    try:
        (ca.directory / "live" / "fullchain.pem").write_bytes(b"not a certificate\n")
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log(r"TLS certificate not reloaded \(SIGHUP\): .*no PEM certificate.*still serving localhost")
        with connect(f"wss://127.0.0.1:{server.tls_port}/fulab/lab/upload/ws", ssl=ca.client_context()) as ws:
            assert served_subject(ws) == "localhost"
    finally:
        server.stop()


@pytest.mark.slow
def test_bad_tls_options_are_refused_with_a_clear_message(tmp_path, ca):
    cert, _ = ca.issue("live")
    other_cert, other_key = ca.issue("other")
    for args, message in [
        (["--tls-port", "0"], "--tls-port, --tls-cert and --tls-key go together"),
        (["--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem")],
         "cannot read .*missing.pem"),
        (["--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(other_key)], "is the key the one"),
    ]:
        server = Daemon(tmp_path / "remote", *args)
        with pytest.raises(RuntimeError, match=message):
            server.start(timeout=20)


def test_file_check_runs_on_the_injected_clock_and_sighup_is_restored(ca):
    live = ca.directory / "live"
    cert, key = ca.issue("live")
    clock = Clock()
    previous = signal.getsignal(signal.SIGHUP)
    certificate = ReloadingCertificate(str(cert), str(key), clock, check_interval=5)
    certificate.startService()
    try:
        assert signal.getsignal(signal.SIGHUP) == certificate._on_sighup
        replace_certificate(ca, live, "renewed.example")
        clock.advance(4)
        assert certificate.describe()["subject"] == "localhost"
        clock.advance(1)
        assert certificate.describe()["subject"] == "renewed.example"
    finally:
        certificate.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous
    assert not clock.getDelayedCalls()
