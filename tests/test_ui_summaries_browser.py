"""
The session list in real headless Chromium shows each session's summary: a Codex and a Claude session
with their title, start date and time, duration, turns, tool calls and failures, tokens and cost (the values
worked out from the raw lines by tests/summary_expectations.py), and "live" only while lines arrive.
"""

from datetime import datetime

import orjson
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

from tests.fixtures import Daemon, get_json, sample_files, sample_lines
from tests.summary_expectations import expected

pytestmark = pytest.mark.slow

SAMPLES = {"codex": "rollout-2026-06-05T10-28-20-019e9625", "claude": "1af7fc5e"}


@pytest.fixture
def quick_daemon(tmp_path):
    """A daemon that calls a session live for 10 s after its last line (the list refreshes every 3 s)."""
    server = Daemon(tmp_path / "remote", "--live-window", "10").start()
    yield server
    server.stop()


def cell(row, name: str) -> str:
    return row.find_element(By.CSS_SELECTOR, f"td.{name}").text


def test_codex_and_claude_sessions_show_their_summary_and_are_live_only_while_lines_arrive(quick_daemon, browser):
    daemon = quick_daemon
    connections = []
    for source, prefix in SAMPLES.items():
        path = next(p for p in sample_files() if p.name.startswith(prefix))
        ws = connect(daemon.url + "/fulab/lab/upload/ws", legacy=True)
        connections.append(ws)
        ws.send(orjson.dumps({"type": "init", "session-id": f"{source}-sample", "source": source,
                              "events": sample_lines(path)}).decode())
        assert orjson.loads(ws.recv(timeout=30))["type"] == "ack"
    entries = {e["session-id"]: e for e in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]}
    browser.get(daemon.http + "/fulab/lab/")
    for source, prefix in SAMPLES.items():
        want = expected(next(p for p in sample_files() if p.name.startswith(prefix)), source)
        row_id = entries[f"{source}-sample"]["id"]
        row = WebDriverWait(browser, 30).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f"tr[data-id='{row_id}']")))
        assert row.find_element(By.CSS_SELECTOR, "a.title").text == want["title"]
        started = datetime.fromisoformat(want["started"])
        shown_date = browser.execute_script("return new Date(arguments[0]).toLocaleDateString()", want["started"])
        assert shown_date in cell(row, "started") and f"{started.astimezone():%M}" in cell(row, "started")
        assert cell(row, "turns") == str(want["turns"])
        calls = sum(want["tool-calls"].values())
        assert cell(row, "tools").startswith(str(calls))
        assert (f"{want['tool-errors']} failed" in cell(row, "tools")) == bool(want["tool-errors"])
        tokens = sum(want["tokens"].values())
        assert cell(row, "tokens") == (f"{tokens / 1000:.1f}k" if tokens < 10_000 else f"{tokens / 1000:.0f}k")
        assert want["cost-usd"] is not None
        assert cell(row, "cost") == (f"${want['cost-usd']:.2f}" if want["cost-usd"] >= 0.01
                                     else f"${want['cost-usd']:.4f}")
        assert cell(row, "duration").endswith("s")
    # Still connected, but no line for over 10 s: no longer live, without a reload.
    WebDriverWait(browser, 30).until(lambda b: not b.find_elements(By.CSS_SELECTOR, ".badge.live"))
    assert all(ws.protocol.state.name == "OPEN" for ws in connections)
    connections[0].send(orjson.dumps({"type": "event", "session-id": "codex-sample", "event": orjson.dumps(
        {"timestamp": "2026-06-05T05:00:00.000Z", "type": "event_msg", "payload": {"type": "task_started"}}).decode(),
    }).decode())
    assert orjson.loads(connections[0].recv(timeout=30))["type"] == "ack"
    assert {e["session-id"]: e["live"] for e in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]} == {
        "codex-sample": True, "claude-sample": False}
    WebDriverWait(browser, 30).until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, f"tr[data-id='{entries['codex-sample']['id']}'] .badge.live")))
    for ws in connections:
        ws.close()
