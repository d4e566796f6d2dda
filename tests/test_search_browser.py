"""
The search box and the PARs page in a real headless Chromium against a real
daemon: typing a word shows it marked in a snippet, grouped under its session,
and clicking the hit opens the session at that line; markup in a session is
shown as text; the PARs page lists PARs with tag filters and session links.
"""

from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.test_search import PLANTED, QUESTIONS, api, caught_up, claude_sample, upload, user_line, wait_for

pytestmark = pytest.mark.slow
HOSTILE = f'<img src=x id=injected> {PLANTED} <script>document.title="owned"</script>'


def wait(browser, condition, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(condition)


@pytest.fixture
def stored(daemon):
    lines = claude_sample()
    lines.insert(12, user_line(f"please check the {PLANTED} before lunch"))
    lines.append(user_line(HOSTILE))
    upload(daemon, "claude-1", lines, pars=[{"title": "Flaky test hunt", "tags": ["flaky", "ci"],
                                             "questions": QUESTIONS}])
    upload(daemon, "claude-2", claude_sample(), pars=[{"title": "Other lesson", "tags": ["docs"]}])
    caught_up(daemon)
    wait_for(lambda: api(daemon, "pars"), lambda answer: len(answer["pars"]) == 2)
    return lines


def test_search_box_to_a_session_at_the_line(daemon, stored, browser):
    browser.get(daemon.http + "/fulab/lab/")
    box = wait(browser, EC.visibility_of_element_located((By.ID, "search-box")))
    box.send_keys(PLANTED, Keys.ENTER)
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "a.hit")))
    groups = browser.find_elements(By.CSS_SELECTOR, ".hit-group")
    assert len(groups) == 1
    hits = groups[0].find_elements(By.CSS_SELECTOR, "a.hit")
    assert sorted(hit.get_attribute("data-line") for hit in hits) == ["12", str(len(stored) - 1)]
    assert {mark.text for mark in groups[0].find_elements(By.TAG_NAME, "mark")} == {PLANTED}
    assert browser.find_elements(By.ID, "injected") == [] and browser.title != "owned"
    assert any("<img src=x id=injected>" in hit.text for hit in hits)
    next(hit for hit in hits if hit.get_attribute("data-line") == "12").click()
    wait(browser, lambda driver: "session=" in driver.current_url)
    assert parse_qs(urlsplit(browser.current_url).query) == {"session": ["claude-1"], "line": ["12"]}


def test_the_pars_page_filters_by_tag_and_links_to_sessions(daemon, stored, browser):
    browser.get(daemon.http + "/fulab/lab/")
    wait(browser, EC.element_to_be_clickable((By.ID, "pars-link"))).click()
    wait(browser, lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".par-entry")) == 2)
    titles = [entry.find_element(By.TAG_NAME, "h3").text for entry in browser.find_elements(By.CSS_SELECTOR,
                                                                                            ".par-entry")]
    assert sorted(titles) == ["Flaky test hunt", "Other lesson"]
    flaky = next(entry for entry in browser.find_elements(By.CSS_SELECTOR, ".par-entry")
                 if entry.find_element(By.TAG_NAME, "h3").text == "Flaky test hunt")
    assert QUESTIONS["learned"] in flaky.text
    next(tag for tag in flaky.find_elements(By.CSS_SELECTOR, "button.tag") if tag.text == "ci").click()
    wait(browser, lambda driver: "tags=ci" in driver.current_url
         and len(driver.find_elements(By.CSS_SELECTOR, ".par-entry")) == 1)
    browser.find_element(By.CSS_SELECTOR, ".par-entry a.par-session").click()
    wait(browser, lambda driver: "session=" in driver.current_url)
    assert parse_qs(urlsplit(browser.current_url).query)["session"] == ["claude-1"]
