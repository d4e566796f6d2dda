"""
`/metrics` and `/healthz` of a real daemon, read with prometheus_client's own parser.
"""

import urllib.request

import orjson
import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.fixtures import Daemon, sample_files, sample_lines

UPLOAD = "/fulab/lab/upload/ws"


def scrape(server) -> dict:
    """Every sample but histogram buckets, keyed by name, or by (name, label value) when labelled."""
    with urllib.request.urlopen(server.http + "/metrics", timeout=30) as response:
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" not in sample.labels:
                samples[(sample.name, *sample.labels.values()) if sample.labels else sample.name] = sample.value
    return samples


@pytest.fixture
def quiet(tmp_path):
    """A daemon whose self-probe does not run during the test (it would count as a connection)."""
    server = Daemon(tmp_path / "remote", "--restart-interval", "600", "--max-connections-per-ip", "2").start()
    yield server
    server.stop()


@pytest.mark.slow
def test_metrics_follow_an_upload(quiet):
    sample = sample_files()[0]
    lines = sample_lines(sample)
    before = scrape(quiet)
    assert before["fulab_lines_stored_total"] == 0 and before["fulab_upload_connections"] == 0
    assert before["fulab_listening"] == 1 and before["process_resident_memory_bytes"] > 0
    init = orjson.dumps({"type": "init", "session-id": "m", "events": lines}).decode()
    with connect(quiet.url + UPLOAD, max_size=None) as ws:
        ws.send(init)
        assert orjson.loads(ws.recv(timeout=30))["count"] == len(lines)
        ws.send("not json")
        assert orjson.loads(ws.recv(timeout=30))["err"] == "bad-json"
        with connect(quiet.url + UPLOAD), pytest.raises(InvalidStatus):
            connect(quiet.url + UPLOAD)  # the third connection from this address: over the cap of 2
        quiet.wait_for_log(r"upload connection from 127\.0\.0\.1 closed")
        during = scrape(quiet)  # a connection too: 2 with the upload
    assert during["fulab_upload_connections"] == 1 and during["fulab_websocket_connections"] == 1
    assert during["fulab_connections"] == 2
    assert during["fulab_websocket_connections_opened_total"] == before["fulab_websocket_connections_opened_total"] + 2
    assert during["fulab_messages_received_total"] == 2
    assert during["fulab_received_bytes_total"] == len(init.encode()) + len("not json")
    assert during["fulab_lines_stored_total"] == len(lines)
    assert during["fulab_acks_total"] == 1
    assert during[("fulab_errors_total", "bad-json")] == 1
    assert during[("fulab_refused_total", "over-limit")] == 1
    assert during["fulab_sessions"] == 1 and during["fulab_viewers"] == 0
    assert during["fulab_fsync_seconds_count"] >= 1 and during["fulab_fsync_seconds_sum"] > 0
    quiet.wait_for_log(r"upload connection from 127\.0\.0\.1 closed", count=2)
    after = scrape(quiet)
    assert after["fulab_upload_connections"] == 0 and after["fulab_websocket_connections"] == 0


@pytest.mark.slow
def test_healthz_says_ok_while_serving(daemon):
    with urllib.request.urlopen(daemon.http + "/healthz", timeout=30) as response:
        assert response.status == 200 and response.read() == b"ok\n"
        assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.slow
def test_json_logs_carry_the_session_id_as_a_field(tmp_path):
    server = Daemon(tmp_path / "remote", twistd_args=("--logger", "fulabd.logs.json_lines")).start()
    try:
        with connect(server.url + UPLOAD) as ws:
            ws.send('{"type": "init", "session-id": "s-42", "events": ["a"]}')
            ws.recv(timeout=30)
            ws.send('{"type": "events", "session-id": "s-42", "seq": 9, "events": ["b"]}')
            ws.recv(timeout=30)
        server.wait_for_log(r"upload connection from 127\.0\.0\.1 closed")
    finally:
        server.stop()
    records = [orjson.loads(line) for line in server.log]
    about = [record for record in records if record.get("session_id") == "s-42"]
    assert [record["text"] for record in about] == [
        "upload of session s-42 from 127.0.0.1 started",
        "upload of session s-42 from 127.0.0.1: refused a message: gap",
        "upload of session s-42 from 127.0.0.1: 1 lines appended, 1 stored"]
    assert all(record["level"] == "info" and record["peer"] == "127.0.0.1" for record in about)
    assert about[1]["err"] == "gap"


def test_healthz_says_503_and_why_when_unhealthy():
    from twisted.web.test.requesthelper import DummyRequest

    from fulabd.web import Health

    request = DummyRequest([b"healthz"])
    body = Health(lambda: "no port is listening").render_GET(request)
    assert request.responseCode == 503 and body == b"unavailable: no port is listening\n"
