"""
Two (and three) real daemons on loopback, each naming the other with
`--remote-source`: each lists the other's sessions with `remote-source`, the
hop marker keeps them from asking each other back, and a lab that is stopped,
frozen or refusing is reported in `remote-errors` while the listing answers.
"""

import os
import signal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.fixtures import Daemon, free_port, get_json
from tests.test_stream_e2e import store

pytestmark = pytest.mark.slow

TOKEN = "lab-c-token-0123456789abcdef"


def on_port(root, port: int, *args: str) -> Daemon:
    return Daemon(root, *args, "--remote-cache", "0", "--remote-timeout", "1",
                  port=f"tcp:{port}:interface=127.0.0.1")


def active(daemon) -> dict:
    return get_json(daemon.http + "/fulab/lab/sessions/active")


@pytest.fixture
def two_labs(request, tmp_path):
    a_port, b_port = free_port(), free_port()
    a = on_port(tmp_path / "a", a_port, "--remote-source", f"lab-b=http://127.0.0.1:{b_port}").start()
    b = on_port(tmp_path / "b", b_port, "--remote-source", f"lab-a=http://127.0.0.1:{a_port}").start()
    yield a, b
    for daemon in (a, b):
        if daemon.process.poll() is None:
            os.kill(daemon.process.pid, signal.SIGCONT)  # a frozen daemon must be able to hear the SIGTERM
        daemon.stop()


def test_two_labs_naming_each_other_list_each_others_sessions_once(two_labs):
    a, b = two_labs
    store(a, "written-on-a", ['{"type":"user","message":{"content":"hi"}}'])
    store(b, "written-on-b", ['{"a":1}'])
    for here, there, name, theirs, ours in ((a, b, "lab-b", "written-on-b", "written-on-a"),
                                             (b, a, "lab-a", "written-on-a", "written-on-b")):
        listing = active(here)
        entries = [(entry["session-id"], entry.get("remote-source")) for entry in listing["sessions"]]
        assert entries == [(ours, None), (theirs, name)]  # not our own again through the other lab
        remote_entry = listing["sessions"][1]
        assert remote_entry["remote-url"] == there.http
        assert remote_entry["viewer-url"] == f"{there.http}/fulab/lab/?session={theirs}"
        assert (listing["remote-sources"], listing["remote-errors"]) == ([name], [])
        everything = get_json(here.http + "/fulab/lab/sessions")["sessions"]
        assert [entry.get("remote-source") for entry in everything] == [None, name]


def test_a_stopped_or_frozen_lab_is_reported_and_the_listing_still_answers(two_labs):
    a, b = two_labs
    store(a, "written-on-a", ['{"a":1}'])
    os.kill(b.process.pid, signal.SIGSTOP)  # accepts connections (the kernel does), never answers
    listing = active(a)
    assert [entry["session-id"] for entry in listing["sessions"]] == ["written-on-a"]
    assert [(error["source"], error["error"]) for error in listing["remote-errors"]] == [("lab-b", "timeout")]
    a.wait_for_log(r"remote lab lab-b \(http://127\.0\.0\.1:\d+\) left out of the listings: no complete answer")
    os.kill(b.process.pid, signal.SIGCONT)
    b.stop()
    listing = active(a)
    assert [entry["session-id"] for entry in listing["sessions"]] == ["written-on-a"]
    (error,) = listing["remote-errors"]
    assert (error["source"], error["error"], error["url"]) == ("lab-b", "unreachable", f"http://127.0.0.1:{b.port}")


def test_a_lab_with_tokens_refuses_without_one_and_answers_with_it(tmp_path):
    token_file, client_token = tmp_path / "tokens", tmp_path / "c.token"
    token_file.write_text(f"{TOKEN} lab-a\n")
    client_token.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    c = Daemon(tmp_path / "c", "--token-file", str(token_file)).start()
    a = on_port(tmp_path / "a", free_port(), "--remote-source", f"c-without={c.http}",
                "--remote-source", f"c-with={c.http}", "--remote-token-file", f"c-with={client_token}").start()
    try:
        listing = active(a)
    finally:
        a.stop()
        c.stop()
    assert [(error["source"], error["error"], error["status"]) for error in listing["remote-errors"]] == [
        ("c-without", "unauthorized", 401)]
    assert "--remote-token-file c-without=FILE" in listing["remote-errors"][0]["detail"]


def test_the_ui_lists_the_other_labs_session_with_a_badge_and_opens_it_there(two_labs, browser):
    a, b = two_labs
    store(b, "written-on-b", ['{"type":"user","message":{"content":"hello from b"}}'])
    browser.get(a.http + "/fulab/lab/")
    row = WebDriverWait(browser, 30).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, "tr[data-id='written-on-b']")))
    assert row.find_element(By.CSS_SELECTOR, ".badge.lab").get_attribute("textContent") == "lab-b"
    link = row.find_element(By.CSS_SELECTOR, "td.name a")
    assert link.get_attribute("href") == f"{b.http}/fulab/lab/?session=written-on-b"
    link.click()
    shown = WebDriverWait(browser, 30).until(
        EC.visibility_of_element_located((By.CSS_SELECTOR, "article.event[data-line='0']")))
    assert "hello from b" in shown.text and browser.current_url.startswith(b.http)
