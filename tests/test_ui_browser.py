"""
The web UI in a real headless Chromium against a real daemon: a session uploaded
with a PAR is listed and shown with its PAR card, new lines arrive without a
reload, a PAR written in the form appears, a dropped stream resumes without
duplicates, a reader at the end keeps following through bursts, the header shows
the summary, a line past the end says so, and bidirectional-text controls in names
are shown.  On failure the browser's screen is saved under the test's tmp_path.
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


def said_line(session_id: str, n: int) -> str:
    """A Claude assistant line a few rows tall, as a burst of them fills the view."""
    return orjson.dumps({"type": "assistant", "sessionId": session_id, "uuid": f"burst-{n}",
                         "timestamp": "2026-12-04T10:00:00.000Z", "message": {"role": "assistant", "content": [
                             {"type": "text", "text": f"line {n}\n\nmore text to make the row taller\n\n- a\n- b"}]}}
                        ).decode()


def test_a_reader_at_the_end_keeps_following_when_lines_arrive_in_bursts(daemon, session, browser):
    """The scroll that following causes can come after the next burst arrived and before it is drawn; it must
    not be taken for the reader scrolling away."""
    uploader, entry, lines = session
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}")
    line_shown(browser, len(lines) - 2)
    count = len(lines) - 1
    for _ in range(3):
        uploader.call({"type": "events", "seq": count,
                       "events": [said_line(uploader.session_id, count + i) for i in range(50)]})
        count += 50
        line_shown(browser, count - 1)
        assert not browser.find_element(By.ID, "jump-latest").is_displayed()


def test_the_header_shows_the_summary_title_tokens_and_cost(daemon, session, browser):
    _, entry, _ = session
    summary = get_json(f"{daemon.http}/fulab/lab/sessions/{entry['id']}")["summary"]
    assert summary["title"] and summary["cost-usd"] is not None
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "session-title"), summary["title"]))
    meta = wait(browser, EC.visibility_of_element_located((By.ID, "session-meta")))
    wait(browser, lambda _: "tokens" in meta.text)
    items = {item.find_element(By.CSS_SELECTOR, ".label").text: item.find_element(By.CSS_SELECTOR, ".value").text
             for item in meta.find_elements(By.CSS_SELECTOR, ".meta-item")}
    total = sum(summary["tokens"].values())
    assert items["tokens"] == (f"{total / 1000:.1f}k" if total < 10_000 else f"{total / 1000:.0f}k"), items
    assert items["cost"] == (f"${summary['cost-usd']:.2f}" if summary["cost-usd"] >= 0.01
                             else f"${summary['cost-usd']:.4f}"), items


def test_a_line_past_the_end_says_so_and_shows_the_end(daemon, session, browser):
    _, entry, lines = session
    for asked in (len(lines) - 1, 99_999):
        browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}&line={asked}")
        note = wait(browser, EC.visibility_of_element_located((By.ID, "line-note")))
        assert f"{asked:,} is past the end" in note.text and f"{len(lines) - 1} lines" in note.text
        line_shown(browser, len(lines) - 2)


def test_bidirectional_controls_in_names_are_shown_not_obeyed(daemon, browser):
    """A path `src/<RLO>gnp.js` would be drawn as `src/sj.png`: in a diff's path, a tag, a title it is shown."""
    rlo = "\u202e"
    edit = {"type": "assistant", "sessionId": "bidi", "uuid": "u1", "timestamp": "2026-12-04T10:00:00.000Z",
            "message": {"role": "assistant", "model": "claude-sonnet-4-20250514", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "Write",
                 "input": {"file_path": f"/src/{rlo}gnp.js", "content": "alert(1)\n"}}]}}
    with connect(daemon.url + "/fulab/lab/upload/ws") as ws:
        for message in ({"type": "init", "session-id": "bidi", "source": "claude", "project": f"/p/{rlo}txt.exe",
                         "events": [orjson.dumps(edit).decode()]},
                        {"type": "par", "session-id": "bidi", "par": {"title": "review", "tags": [f"{rlo}evil"],
                                                                      "questions": QUESTIONS}}):
            ws.send(orjson.dumps(message).decode())
            assert orjson.loads(ws.recv(timeout=30))["type"] == "ack"
    browser.get(f"{daemon.http}/fulab/lab/?session=bidi")
    path = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, ".diff-path")))
    assert path.text.startswith("/src/⟨U+202E⟩gnp.js"), path.text
    tag = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, ".par-card .tag")))
    assert tag.text == "⟨U+202E⟩evil"
    wait(browser, EC.text_to_be_present_in_element((By.ID, "session-title"), "⟨U+202E⟩txt.exe"))
    browser.get(f"{daemon.http}/fulab/lab/")
    link = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, "tr[data-id='bidi'] a.title")))
    assert "⟨U+202E⟩" in link.text and rlo not in link.text
