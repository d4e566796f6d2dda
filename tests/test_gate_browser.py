"""
Browsers cannot be turned against the lab, in a real headless Chromium: a page
served from another origin (a second local HTTP server) tries what worked
before issue #9 — a `no-cors` fetch and a `text/plain` form POST of a PAR, a
stream WebSocket reading a transcript, an upload WebSocket creating a session —
and each is refused.  And the UI opened as `/fulab/lab/?token=T` on a daemon
with tokens works, keeping the token out of the address bar and its links.
"""

import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

from tests.fixtures import Daemon, get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow

SESSION = "1af7fc5e-8455-4414-9ccd-011d40f70b2a"
ATTACK = """<!doctype html><html><body><iframe name="sink"></iframe><script>
const target = "http://127.0.0.1:%(port)d", session = "%(session)s";
const results = {stream: [], upload: []};
function socket(path, onopen, into) {
  return new Promise(resolve => {
    const ws = new WebSocket("ws://127.0.0.1:%(port)d" + path);
    ws.onopen = () => onopen(ws);
    ws.onmessage = event => into.push(JSON.parse(event.data));
    ws.onclose = event => resolve(event.code);
  });
}
async function attack() {
  await fetch(target + "/fulab/lab/sessions/" + session + "/pars", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: JSON.stringify({title: "planted by fetch"})}).catch(() => {});
  const form = document.createElement("form");
  form.method = "POST"; form.enctype = "text/plain"; form.target = "sink";
  form.action = target + "/fulab/lab/sessions/" + session + "/pars";
  const field = document.createElement("input");
  field.name = '{"title":"planted by a form","x":"'; field.value = '"}';
  form.appendChild(field); document.body.appendChild(form); form.submit();
  results.streamClose = await socket("/fulab/lab/stream/ws?session=" + session, () => {}, results.stream);
  results.uploadClose = await socket("/fulab/lab/upload/ws", ws => ws.send(JSON.stringify(
    {type: "init", "session-id": "planted", events: ["{}"]})), results.upload);
  window.results = results;
}
attack();
</script></body></html>"""


def upload_sample(server, headers=None) -> str:
    lines = sample_lines(next(p for p in sample_files() if p.name.startswith("1af7fc5e")))
    with connect(server.url + "/fulab/lab/upload/ws", additional_headers=headers or {}, max_size=None) as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": SESSION, "events": lines}).decode())
        assert orjson.loads(ws.recv(timeout=30))["count"] == len(lines)
    return SESSION


class AttackerSite:
    """A second local web server (another origin) serving one page."""

    def __init__(self, page: bytes):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_page_of_another_origin_can_neither_write_nor_read_nor_upload(daemon, browser):
    """The daemon runs without tokens (the default): only the Origin check stands between."""
    upload_sample(daemon)
    attacker = AttackerSite((ATTACK % {"port": daemon.port, "session": SESSION}).encode())
    try:
        browser.get(attacker.url)
        results = WebDriverWait(browser, 60).until(lambda b: b.execute_script("return window.results"))
        origin = attacker.url.rstrip("/")
        daemon.wait_for_log(rf"refused POST /fulab/lab/sessions/{SESSION}/pars from 127\.0\.0\.1: Origin {origin}",
                            count=2)  # the fetch and the form
    finally:
        attacker.close()
    assert results["streamClose"] == 1008 and [m["err"] for m in results["stream"]] == ["unauthorized"]
    assert results["uploadClose"] == 1008 and [m["err"] for m in results["upload"]] == ["unauthorized"]
    assert get_json(daemon.http + f"/fulab/lab/sessions/{SESSION}/pars")["pars"] == []
    assert [s["session-id"] for s in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]] == [SESSION]
    assert not (daemon.root / "planted.jsonl").exists()


def test_the_ui_opened_with_a_token_loads_and_keeps_the_token_out_of_urls(tmp_path, browser):
    token = secrets.token_urlsafe(32)
    (tmp_path / "tokens").write_text(f"{token} reader read\n{secrets.token_urlsafe(32)} laptop upload\n")
    (tmp_path / "tokens").chmod(0o600)
    server = Daemon(tmp_path / "remote", "--token-file", str(tmp_path / "tokens")).start()
    try:
        uploader = (tmp_path / "tokens").read_text().split("\n")[1].split()[0]
        upload_sample(server, {"Authorization": "Bearer " + uploader})
        browser.get(server.http + f"/fulab/lab/?token={token}")
        row = WebDriverWait(browser, 30).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, "tr[data-id]")))
        assert "token" not in browser.current_url
        assert browser.execute_script("return sessionStorage.getItem('fulab-token')") == token
        links = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
        assert links and not any(token in link for link in links)
        row.click()
        WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "article.event")))
        assert "token" not in browser.current_url and "session=" in browser.current_url
        browser.refresh()  # the tab still has its token: the stream opens again without one in the URL
        WebDriverWait(browser, 30).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "article.event")))
        links = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
        assert any("/export" in link for link in links) and not any(token in link for link in links)
        browser.execute_script("""window.saved = null; const real = URL.createObjectURL;
            URL.createObjectURL = (blob) => { blob.text().then((text) => { window.saved = text; }); return real(blob); };""")
        browser.find_element(By.ID, "export-md").click()  # fetched with the token in a header, then saved
        saved = WebDriverWait(browser, 30).until(lambda b: b.execute_script("return window.saved"))
        assert saved.startswith("# ") and "| session |" in saved
        browser.execute_script("sessionStorage.clear()")
        browser.get(server.http + "/fulab/lab/")  # no token: the list says what the server said, how to give one
        WebDriverWait(browser, 30).until(EC.text_to_be_present_in_element((By.ID, "list-error"), "?token=TOKEN"))
    finally:
        server.stop()
    assert token not in "\n".join(server.log)
