"""
The web UI in a real headless Chromium against a real daemon: a session uploaded
with a PAR is listed and shown with its PAR card, new lines arrive without a
reload, a PAR written in the form appears, and a dropped stream resumes without
duplicates.  On failure the browser's screen is saved under the test's tmp_path.
"""

import edn_format
import orjson
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

from tests.fixtures import get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow  # every test here starts a daemon (or more)

QUESTIONS = {"intention": "Scaffold the TODO app", "happening": "Sub-agents wrote the files",
             "perspectives": "The reviewer wanted fewer reads", "learned": "Narrow briefs help",
             "forward": "List the files first"}
LABELS = ["Intention", "What happened", "Perspectives", "Learned", "Forward"]


class Uploader:
    """An upload connection held open, as `fulab-upload` holds one."""

    def __init__(self, ws, session_id: str):
        self.ws = ws
        self.session_id = session_id

    def call(self, message: dict) -> dict:
        self.ws.send(orjson.dumps({"session-id": self.session_id, **message}).decode())
        reply = orjson.loads(self.ws.recv(timeout=30))
        assert reply["type"] == "ack", reply
        return reply

    def close(self):
        self.ws.close()


@pytest.fixture
def session(daemon):
    """The 29-line real Claude sample minus its last line, uploaded with a PAR; yields (uploader, entry, lines)."""
    sample = next(p for p in sample_files() if p.name.startswith("1af7fc5e"))
    lines = sample_lines(sample)
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        uploader = Uploader(ws, "1af7fc5e-8455-4414-9ccd-011d40f70b2a")
        uploader.call({"type": "init", "source": "claude", "project": "/home/dev/todo-app", "originator": "laptop",
                       "events": lines[:-1]})
        uploader.call({"type": "par", "par": {"title": "TODO app review", "tags": ["scaffold", "review"],
                                              "questions": QUESTIONS}})
        entry = get_json(daemon.http + "/fulab/lab/sessions")["sessions"][0]
        yield uploader, entry, lines


def wait(browser, condition, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(condition)


def par_card(browser, title: str):
    return wait(browser, EC.visibility_of_element_located(
        (By.XPATH, f"//article[contains(@class,'par-card')][h3[normalize-space()='{title}']]")))


def line_shown(browser, line: int):
    """The visible row of `line`; a tool result's line shows in its call's card."""
    return wait(browser, EC.visibility_of_element_located(
        (By.CSS_SELECTOR, f"#events .row[data-line='{line}']:not(.paired), .tool-card[data-result-line='{line}']")))


def shown_lines(browser) -> list[int]:
    return [int(value) for value in browser.execute_script(
        "return [...document.querySelectorAll('#events .row')].map(e => e.dataset.line)")]


def test_list_shows_the_session_live_and_updates_without_reload(daemon, session, browser):
    uploader, entry, _ = session
    browser.get(daemon.http + "/fulab/lab/?token=passed-on")
    row = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-id='{entry['id']}']")))
    assert "todo-app" in row.text and "Claude".lower() in row.text.lower() and "laptop" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".badge.live").is_displayed()
    assert row.find_elements(By.CSS_SELECTOR, "td")[-1].text == "1"
    browser.execute_script("window.notReloaded = true")

    turns = row.find_element(By.CSS_SELECTOR, "td.turns").text
    uploader.call({"type": "event", "event": orjson.dumps({
        "type": "user", "timestamp": "2025-09-03T01:00:00.000Z", "sessionId": uploader.session_id,
        "message": {"role": "user", "content": "one more prompt"}}).decode()})
    wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, f"tr[data-id='{entry['id']}'] td.turns").text
         == str(int(turns) + 1))  # the new line's turn shows on the next refresh, without a reload
    assert browser.execute_script("return window.notReloaded") is True

    browser.find_element(By.ID, "filter").send_keys("no-such-project")
    wait(browser, EC.visibility_of_element_located((By.ID, "list-empty")))
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "filter").send_keys("todo laptop")
    wait(browser, EC.element_to_be_clickable((By.LINK_TEXT, "/init"))).click()  # the session's title
    wait(browser, EC.url_contains(f"?session={entry['id']}"))
    assert "token" not in browser.current_url  # the tab keeps it in sessionStorage, not in links
    par_card(browser, "TODO app review")


def test_session_view_shows_the_par_new_lines_and_a_par_written_in_the_form(daemon, session, browser):
    uploader, entry, lines = session
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}")

    card = par_card(browser, "TODO app review")
    assert [tag.text for tag in card.find_elements(By.CSS_SELECTOR, ".tag")] == ["scaffold", "review"]
    assert [dt.text.lower() for dt in card.find_elements(By.TAG_NAME, "dt")] == [label.lower() for label in LABELS]
    assert [dd.text for dd in card.find_elements(By.TAG_NAME, "dd")] == list(QUESTIONS.values())
    line_shown(browser, len(lines) - 2)
    assert browser.find_element(By.CSS_SELECTOR, "article.ev-tool_use details summary").is_displayed()
    browser.execute_script("window.notReloaded = true")

    uploader.call({"type": "events", "seq": len(lines) - 1, "events": lines[-1:]})
    last = line_shown(browser, len(lines) - 1)
    assert last.is_displayed() and browser.execute_script("return window.notReloaded") is True

    browser.find_element(By.ID, "write-par").click()
    form = wait(browser, EC.visibility_of_element_located((By.ID, "par-form")))
    form.find_element(By.NAME, "title").send_keys("Written in the browser")
    form.find_element(By.NAME, "tags").send_keys("ui, form")
    form.find_element(By.NAME, "learned").send_keys("The form posts to the sidecar")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    card = par_card(browser, "Written in the browser")
    assert [tag.text for tag in card.find_elements(By.CSS_SELECTOR, ".tag")] == ["ui", "form"]
    assert "The form posts to the sidecar" in card.text
    assert browser.execute_script("return window.notReloaded") is True
    stored = edn_format.loads((daemon.root / f"{entry['id']}.par.edn").read_text())
    assert [par[edn_format.Keyword("title")] for par in stored] == ["TODO app review", "Written in the browser"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "article.par-card")) == 2


def test_a_dropped_stream_resumes_from_its_offset_without_duplicates(daemon, session, browser):
    uploader, entry, lines = session
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}")
    line_shown(browser, len(lines) - 2)
    par_card(browser, "TODO app review")
    before = shown_lines(browser)
    browser.execute_script("window.notReloaded = true")

    uploader.close()
    daemon.restart()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "conn"), "retrying"))
    wait(browser, EC.text_to_be_present_in_element((By.ID, "conn"), "live"))
    daemon.wait_for_log(rf"viewer from .* opened .* at line {len(lines) - 1}, PAR 1$")
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        Uploader(ws, uploader.session_id).call({"type": "events", "seq": len(lines) - 1, "events": lines[-1:]})
    line_shown(browser, len(lines) - 1)
    after = shown_lines(browser)
    assert after == before + [len(lines) - 1]
    assert len(browser.find_elements(By.CSS_SELECTOR, "article.par-card")) == 1
    assert browser.execute_script("return window.notReloaded") is True


def test_scrolling_up_stops_following_until_the_reader_jumps_back(daemon, session, browser):
    uploader, entry, lines = session
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}")
    line_shown(browser, len(lines) - 2)
    browser.execute_script("const t = document.getElementById('timeline'); t.scrollTop = 0;"
                           "t.dispatchEvent(new Event('scroll'))")
    wait(browser, EC.visibility_of_element_located((By.ID, "jump-latest")))

    uploader.call({"type": "events", "seq": len(lines) - 1, "events": lines[-1:]})
    wait(browser, EC.text_to_be_present_in_element((By.ID, "jump-latest"), "1 new event"))
    assert browser.execute_script("return document.getElementById('timeline').scrollTop") == 0
    assert not browser.find_elements(By.CSS_SELECTOR, f"#events .row[data-line='{len(lines) - 1}']")

    browser.find_element(By.ID, "jump-latest").click()
    line_shown(browser, len(lines) - 1)
    wait(browser, EC.invisibility_of_element_located((By.ID, "jump-latest")))
    assert browser.execute_script("const t = document.getElementById('timeline');"
                                  "return t.scrollHeight - t.scrollTop - t.clientHeight < 60")
