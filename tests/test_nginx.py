"""
The shipped nginx config, run by the real nginx with TLS in front of the
real daemon: uploads over wss:// and the listings come through it.
"""

import re
import urllib.request

import orjson
import pytest
from websockets.sync.client import connect

from tests.fixtures import get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)


def upload_through(nginx, ca, path: str, session_id: str, sample) -> dict:
    with connect(nginx.url + path, ssl=ca.client_context(), max_size=None) as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": session_id, "source": "codex",
                              "events": sample_lines(sample)}).decode())
        return orjson.loads(ws.recv(timeout=30))


@pytest.mark.parametrize("path", ["/fulab/lab/upload/ws", "/upload/ws"])
def test_upload_and_listings_through_nginx(nginx, daemon, ca, path):
    samples = sample_files()
    for number, sample in enumerate(samples):
        reply = upload_through(nginx, ca, path, f"via-nginx-{number}", sample)
        assert reply["count"] == len(sample_lines(sample)), reply
        assert (daemon.root / f"via-nginx-{number}.jsonl").read_bytes() == sample.read_bytes()
    listing = get_json(nginx.https + "/fulab/lab/sessions", context=ca.client_context())
    assert sorted(entry["id"] for entry in listing["sessions"]) == sorted(
        f"via-nginx-{number}" for number in range(len(samples)))
    status = get_json(nginx.https + "/fulab/lab/status", context=ca.client_context())
    assert status["running"] is True


def test_old_viewer_path_reaches_the_daemon(nginx, ca):
    """`/?path=` is upgraded through nginx by the daemon, which answers it (nginx alone would say 404)."""
    with connect(nginx.url + "/?path=/nowhere.jsonl", ssl=ca.client_context()) as ws:
        reply = orjson.loads(ws.recv(timeout=30))
    assert "type" in reply


def test_the_ui_and_its_files_come_through_the_prefix_alone(nginx, ca):
    """The page refers to its files relatively, so `location /fulab/lab/` is all it needs."""
    def fetch(path):
        with urllib.request.urlopen(nginx.https + path, timeout=30, context=ca.client_context()) as response:
            return response.status, response.read().decode()

    status, page = fetch("/fulab/lab/")
    assert status == 200 and "<html" in page.lower()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    local = [ref for ref in references if not ref.startswith(("data:", "http:", "https:", "#"))]
    assert local and not any(ref.startswith("/") for ref in local), references
    for ref in local:
        assert fetch("/fulab/lab/" + ref.removeprefix("./"))[0] == 200, ref
