"""
The session view as a transcript reader, in real headless Chromium against a real
daemon: each real sample shows Markdown as elements, file edits as diffs, one card per
tool call holding its result, date separators and folded bookkeeping; no XSS payload
runs; nothing scrolls sideways on a phone; a PAR about lines shows its range and goes
there; `?line=N` opens the session at line N.  Screenshots at 1400×900 and 400×800 are
saved under the test's tmp_path (and, when `READER_SHOTS` names a folder, copied there).
"""

import os
from datetime import datetime
import shutil

import edn_format
import orjson
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from websockets.sync.client import connect

from markdown_it import MarkdownIt

from fulabd.events import normalize
from fulabd.export import is_context
from tests.fixtures import get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow

REAL = [path for path in sample_files() if "curated-not-real" not in path.parts]
XSS = [
    "<script>window.xss = 'script'</script>",
    "<img src=x onerror=\"window.xss = 'img'\">",
    "[click me](javascript:window.xss='link')",
    "<svg onload=\"window.xss = 'svg'\"></svg>",
    "<iframe src=\"javascript:window.xss='iframe'\"></iframe>",
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cueHNzPSdkYXRhJzwvc2NyaXB0Pg==)",
    "\" onmouseover=\"window.xss = 'attr'\" x=\"",
    "</textarea></pre></div><script>window.xss = 'breakout'</script>",
    "![pic](javascript:window.xss='image') <a href=\"javascript:window.xss='a'\">a</a>",
]
TAGS = {"strong_open": "strong", "list_item_open": "li", "fence": "pre code", "code_block": "pre code"}


def wait(browser, condition, timeout: float = 30):
    return WebDriverWait(browser, timeout).until(condition)


def upload(daemon, session_id: str, lines: list[str], source: str = "claude") -> dict:
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        ws.send(orjson.dumps({"type": "init", "session-id": session_id, "source": source,
                              "project": "/home/dev/demo", "events": lines}).decode())
        assert orjson.loads(ws.recv(timeout=30))["type"] == "ack"
    return next(entry for entry in get_json(daemon.http + "/fulab/lab/sessions")["sessions"]
                if entry["session-id"] == session_id)


def post_par(daemon, entry: dict, par: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(f"{daemon.http}/fulab/lab/sessions/{entry['id']}/pars",
                                     data=orjson.dumps(par), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def open_whole(browser, url: str):
    """Open a session view, wait until its history is in, and render every event."""
    browser.get(url)
    wait(browser, EC.text_to_be_present_in_element((By.ID, "conn"), "live"))
    wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#events .row"))
    while browser.find_element(By.ID, "load-earlier").is_displayed():
        browser.find_element(By.ID, "load-earlier").click()


def events_of(path) -> list[dict]:
    return [event for index, raw in enumerate(path.read_bytes().split(b"\n")[:-1])
            if (event := normalize(raw, index)) is not None]


def blocks(event):
    return event["blocks"] if len(event.get("blocks") or ()) > 1 else [event]


def markdown_tags(events) -> set[str]:
    """The elements the messages' Markdown makes (parsed by markdown-it-py), of those the test looks for."""
    tags = set()
    for event in events:
        if event["type"] not in ("user", "assistant") or is_context(event):
            continue
        for block in blocks(event):
            if block["type"] in ("user", "assistant"):
                tokens = MarkdownIt("default", {"html": False}).parse(block.get("text") or "")
                tags |= {TAGS[t.type] for t in tokens for t in [t, *(t.children or [])] if t.type in TAGS}
    return tags


def js(browser, script: str, *args):
    return browser.execute_script(script, *args)


@pytest.mark.parametrize("sample", REAL, ids=lambda path: path.stem[:13])
def test_each_real_sample_reads_as_a_transcript(daemon, browser, sample):
    entry = upload(daemon, sample.stem, sample_lines(sample), "codex" if "codex" in sample.parts else "claude")
    open_whole(browser, f"{daemon.http}/fulab/lab/?session={entry['id']}")
    events = events_of(sample)
    assert js(browser, "return window.xss") is None

    for selector in markdown_tags(events):
        assert js(browser, f"return document.querySelectorAll('#events .markdown {selector}').length") > 0, selector
    assert "**" not in js(browser, "return [...document.querySelectorAll('#events .markdown strong')]"
                                   ".map(n => n.parentNode.textContent).join('')")

    calls = {block["call-id"]: event["line"] for event in events for block in blocks(event)
             if block["type"] == "tool_use" and block.get("call-id")}
    answered = {block["call-id"] for event in events for block in blocks(event)
                if block["type"] == "tool_result" and block.get("call-id") in calls}
    cards = js(browser, "return [...document.querySelectorAll('.tool-card[data-call-id]')].map(c => "
                        "[c.dataset.callId, c.classList.contains('pending'), !!c.querySelector('.tool-result details')])")
    assert sorted(card[0] for card in cards) == sorted(calls)  # one card per call
    for call_id, pending, has_result in cards:
        assert (not pending and has_result) == (call_id in answered), call_id
    results_shown_alone = js(browser, "return document.querySelectorAll('article.ev-tool_result').length")
    assert results_shown_alone == sum(1 for event in events if event["type"] == "tool_result"
                                      and event.get("call-id") not in calls)

    if any(event.get("timestamp") for event in events):
        assert js(browser, "return document.querySelectorAll('.day-sep').length") >= 1
    quiet = [event["line"] for event in events if event["type"] == "raw"
             and not any(word in event["kind"] for word in ("error", "abort"))]
    if quiet:
        assert js(browser, "return document.querySelectorAll('.bk-toggle').length") >= 1
        assert js(browser, "return [...document.querySelectorAll('article.ev-raw')].filter(a => a.offsetParent)"
                           ".length") == 0
        browser.find_element(By.CSS_SELECTOR, ".bk-toggle").click()
        assert js(browser, "return [...document.querySelectorAll('article.ev-raw')].filter(a => a.offsetParent)"
                           ".length") >= 1


def test_a_known_claude_edit_is_a_diff_with_its_removed_and_added_lines(daemon, browser):
    sample = next(path for path in REAL if path.name.startswith("fe5e1c67"))
    entry = upload(daemon, sample.stem, sample_lines(sample))
    open_whole(browser, f"{daemon.http}/fulab/lab/?session={entry['id']}")
    card = browser.find_element(By.CSS_SELECTOR, ".row[data-line='376'] .tool-card")
    assert card.find_element(By.CSS_SELECTOR, ".diff-path").text.startswith("/")
    card.find_element(By.CSS_SELECTOR, ".diff .more").click()  # 393 lines: folded past the first 60
    removed = js(browser, "return [...arguments[0].querySelectorAll('.dl.del')].map(n => n.textContent)", card)
    added = js(browser, "return [...arguments[0].querySelectorAll('.dl.add')].map(n => n.textContent)", card)
    assert "-import { useReducer, useEffect, useMemo, useCallback } from 'react';" in removed
    assert "+'use client';" in added and "+import { useState, useCallback } from 'react';" in added
    assert "\\n" not in card.find_element(By.CSS_SELECTOR, ".diff").text
    card.find_element(By.CSS_SELECTOR, ".raw-input summary").click()
    assert "old_string" in card.find_element(By.CSS_SELECTOR, ".raw-input pre").text


def xss_session() -> list[str]:
    lines = []
    for n, payload in enumerate(XSS):
        stamp = f"2026-01-0{1 + n // 5}T10:{n:02d}:00Z"
        lines += [
            {"type": "user", "timestamp": stamp, "message": {"role": "user", "content":
                f"{payload}\n\n**bold** {payload}\n\n| left | right |\n|:--|--:|\n| {payload} | 2 |"}},
            {"type": "assistant", "timestamp": stamp, "message": {"role": "assistant", "content": [
                {"type": "text", "text": f"- item {payload}\n\n```\n{payload}\n```"},
                {"type": "tool_use", "id": f"t{n}", "name": "Edit",
                 "input": {"file_path": payload, "old_string": payload, "new_string": payload + "!"}}]}},
            {"type": "user", "timestamp": stamp, "message": {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"t{n}", "content": payload}]}},
        ]
    return [orjson.dumps(line).decode() for line in lines]


def test_no_xss_payload_runs_in_the_view_or_the_par_column(daemon, browser):
    entry = upload(daemon, "xss", xss_session())
    for n, payload in enumerate(XSS):
        post_par(daemon, entry, {"title": f"PAR {n} {payload}", "questions": {"learned": payload}})
    open_whole(browser, f"{daemon.http}/fulab/lab/?session={entry['id']}")
    wait(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".par-card")) == len(XSS))
    for summary in browser.find_elements(By.CSS_SELECTOR, "#events details summary"):
        summary.click()
    for node in browser.find_elements(By.CSS_SELECTOR, "#events .markdown a"):
        ActionChains(browser).move_to_element(node).perform()
    assert js(browser, "return window.xss") is None
    dangerous = js(browser, "return document.querySelectorAll('#events script, #events img, #events svg, "
                            "#events iframe, #pars script, #pars img, [onerror], [onload], [onmouseover]').length")
    assert dangerous == 0
    hrefs = js(browser, "return [...document.querySelectorAll('#events a, #pars a')].map(a => a.getAttribute('href'))")
    assert all(not href.lower().startswith(("javascript:", "data:")) for href in hrefs), hrefs
    assert "<script>" in browser.find_element(By.ID, "events").text  # shown as text
    assert js(browser, "return document.querySelectorAll('#events .markdown strong').length") >= len(XSS)
    assert js(browser, "return document.querySelectorAll('#events .markdown td.align-right').length") >= len(XSS)
    assert js(browser, "return document.querySelectorAll('#events [style]').length") == 0  # the CSP allows none


def shots(browser, tmp_path, name: str):
    for width, height in ((1400, 900), (400, 800)):
        browser.set_window_size(width, height)
        wait(browser, lambda b: js(b, "return window.innerWidth") == width)
        assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth"), (name, width)
        target = tmp_path / f"{name}-{width}x{height}.png"
        browser.save_screenshot(str(target))
        if os.environ.get("READER_SHOTS"):
            shutil.copy(target, os.environ["READER_SHOTS"])
    browser.set_window_size(1400, 900)


def test_screenshots_at_desktop_and_phone_width_with_nothing_scrolling_sideways(daemon, browser, tmp_path):
    sample = next(path for path in REAL if path.name.startswith("1af7fc5e"))
    entry = upload(daemon, sample.stem, sample_lines(sample))
    post_par(daemon, entry, {"title": "CLAUDE.md review", "tags": "review", "lines": [23, 25],
                             "questions": {"learned": "Writing CLAUDE.md needs a permission first"}})
    browser.get(daemon.http + "/fulab/lab/")
    wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-id='{entry['id']}']")))
    shots(browser, tmp_path, "list")
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}&line=21")  # a diff and tool cards in view
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".row.target[data-line='21']")))
    wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, ".par-card")))
    shots(browser, tmp_path, "session")
    exported = js(browser, "return Promise.all(['md', 'html'].map(f => fetch(document.getElementById('export-' + f).href)"
                           ".then(r => [r.status, r.headers.get('content-disposition'), r.text()])"
                           ".then(([s, d, t]) => t.then(text => [s, d, text]))))")
    for (status, disposition, text), suffix in zip(exported, ("md", "html")):
        assert status == 200 and disposition.endswith(f'"{entry["id"]}.{suffix}"') and "CLAUDE.md review" in text
    assert (tmp_path / "session-400x800.png").stat().st_size > 0


def test_a_par_about_lines_shows_its_range_and_goes_there(daemon, browser):
    sample = next(path for path in REAL if path.name.startswith("fe5e1c67"))
    entry = upload(daemon, sample.stem, sample_lines(sample))
    post_par(daemon, entry, {"title": "About the setup", "lines": [4, 6], "questions": {"learned": "x"}})
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "conn"), "live"))
    link = wait(browser, EC.element_to_be_clickable((By.CSS_SELECTOR, ".par-card .par-lines")))
    assert link.text == "lines 4–6"
    assert not browser.find_elements(By.CSS_SELECTOR, ".row[data-line='4']")  # the tail is shown, not line 4
    link.click()
    row = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".row.target[data-line='4']")))
    assert browser.execute_script("const r = arguments[0].getBoundingClientRect(), t = document.getElementById("
                                  "'timeline').getBoundingClientRect(); return r.bottom > t.top && r.top < t.bottom", row)

    # a range selected in the transcript becomes the PAR's lines
    browser.find_element(By.CSS_SELECTOR, ".row[data-line='3'] .ev-line").click()
    ActionChains(browser).key_down(Keys.SHIFT).click(
        browser.find_element(By.CSS_SELECTOR, ".row[data-line='5'] .ev-line")).key_up(Keys.SHIFT).perform()
    assert "lines 3–5 selected" in browser.find_element(By.ID, "selection-bar").text
    assert js(browser, "return [...document.querySelectorAll('.row.selected')].map(r => r.dataset.line)") == \
        ["3", "4", "5"]
    browser.find_element(By.ID, "par-from-selection").click()
    form = wait(browser, EC.visibility_of_element_located((By.ID, "par-form")))
    assert "About lines 3–5" in form.text
    form.find_element(By.NAME, "title").send_keys("Written about a selection")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, EC.visibility_of_element_located(
        (By.XPATH, "//article[contains(@class,'par-card')][h3='Written about a selection']//button[.='lines 3–5']")))
    stored = edn_format.loads((daemon.root / f"{entry['id']}.par.edn").read_text())
    assert [list(par[edn_format.Keyword("lines")]) for par in stored] == [[4, 6], [3, 5]]


def test_the_line_parameter_opens_the_session_at_that_line_and_earlier_lines_load_on_demand(daemon, browser):
    sample = next(path for path in REAL if path.name.startswith("fe5e1c67"))
    entry = upload(daemon, sample.stem, sample_lines(sample))
    browser.get(f"{daemon.http}/fulab/lab/?session={entry['id']}&line=300")
    row = wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".row.target[data-line='300']")))
    assert row.is_displayed() or browser.find_elements(By.CSS_SELECTOR, ".tool-card[data-result-line='300']")
    first = int(js(browser, "return document.querySelector('#events .row').dataset.line"))
    assert first >= 100  # the stream began near the target, not at line 0
    while browser.find_element(By.ID, "load-earlier").is_displayed():  # the lines held, then the ones before
        browser.find_element(By.ID, "load-earlier").click()
    before = browser.find_element(By.ID, "load-before")
    assert before.is_displayed() and "this view starts at line 100" in before.text
    before.click()
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#events .row[data-line='0']")))
    assert browser.find_elements(By.CSS_SELECTOR, "#events .row[data-line='100']")  # the reader stays there
    assert not browser.find_element(By.ID, "load-before").is_displayed()


def test_a_result_arriving_live_fills_its_call_card(daemon, browser):
    sample = next(path for path in REAL if path.name.startswith("1af7fc5e"))
    lines = sample_lines(sample)
    events = events_of(sample)
    call = next(event for event in events if event["type"] == "tool_use" and event["tool-name"] == "Bash")
    result = next(event for event in events if event.get("call-id") == call["call-id"] and event is not call)
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        def send(message):
            ws.send(orjson.dumps({"session-id": "live", **message}).decode())
            assert orjson.loads(ws.recv(timeout=30))["type"] == "ack"

        send({"type": "init", "source": "claude", "events": lines[:result["line"]]})
        browser.get(f"{daemon.http}/fulab/lab/?session=live")
        card = wait(browser, EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f".tool-card[data-call-id='{call['call-id']}']")))
        assert "pending" in card.get_attribute("class") and "no result yet" in card.text
        send({"type": "events", "seq": result["line"], "events": lines[result["line"]:result["line"] + 1]})
        wait(browser, lambda b: "ok" in card.get_attribute("class").split())
        took = (datetime.fromisoformat(result["timestamp"]) - datetime.fromisoformat(call["timestamp"])).total_seconds()
        assert 0 < took < 10 and card.find_element(By.CSS_SELECTOR, ".tool-time").text == f"{took:.1f} s"
        assert card.get_attribute("data-result-line") == str(result["line"])


def test_a_task_call_links_to_its_sub_agent_session_and_sidechain_lines_are_indented(daemon, browser):
    folder = next(path for path in sample_files() if path.parent.name == "subagent-layout").parent
    parent_file = next(folder.glob("*.jsonl"))
    parent = parent_file.stem
    child = next(folder.rglob("agent-*.jsonl"))
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        def send(session_id, path, extra):
            ws.send(orjson.dumps({"type": "init", "session-id": session_id, "source": "claude",
                                  "events": sample_lines(path), **extra}).decode())
            assert orjson.loads(ws.recv(timeout=30))["type"] == "ack"

        send(parent, parent_file, {})
        browser.get(f"{daemon.http}/fulab/lab/?session={parent}")
        wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".tool-card[data-task='0'] .subagent")))
        send(f"{parent}/{child.stem}", child, {"parent-session-id": parent})  # found by the header's next poll
    sessions = get_json(daemon.http + "/fulab/lab/sessions")["sessions"]
    child_entry = next(entry for entry in sessions if entry["session-id"] != parent)
    assert child_entry.get("parent-session-id") == parent
    link = wait(browser, EC.visibility_of_element_located((By.CSS_SELECTOR, ".tool-card[data-task='0'] .subagent a")))
    assert link.get_attribute("href").endswith(f"?session={child_entry['id']}")

    link.click()
    rows = wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#events .row.sidechain"))
    assert js(browser, "return parseFloat(getComputedStyle(arguments[0]).marginLeft)", rows[0]) > 0


PATCH = "*** Begin Patch\n*** Update File: src/app.py\n@@ def main():\n-    print('hi')\n+    print('hello')\n*** End Patch\n"


def test_every_file_edit_tool_is_a_diff_with_its_path(daemon, browser):
    claude = [{"type": "assistant", "timestamp": "2026-01-01T10:00:00Z", "message": {"role": "assistant", "content": [
        {"type": "tool_use", "id": "m1", "name": "MultiEdit", "input": {"file_path": "/r/a.txt", "edits": [
            {"old_string": "one\ntwo", "new_string": "one\n2"}, {"old_string": "x", "new_string": "y"}]}},
        {"type": "tool_use", "id": "w1", "name": "Write", "input": {"file_path": "/r/new.txt", "content": "fresh\nfile"}},
        {"type": "tool_use", "id": "n1", "name": "NotebookEdit",
         "input": {"notebook_path": "/r/n.ipynb", "cell_id": "c3", "new_source": "import os", "edit_mode": "insert"}},
    ]}}]
    codex = [{"timestamp": "2026-01-01T10:01:00Z", "type": "response_item", "payload": {
        "type": "custom_tool_call", "name": "apply_patch", "call_id": "p1", "input": PATCH}},
        {"timestamp": "2026-01-01T10:01:01Z", "type": "response_item", "payload": {
            "type": "custom_tool_call_output", "call_id": "p1", "output": "Success. Updated: src/app.py"}}]
    reminded = [{"type": "user", "timestamp": "2026-01-01T10:02:00Z", "message": {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nContents of /r/CLAUDE.md: be brief\n</system-reminder>"},
        {"type": "text", "text": "Now fix the **parser**"}]}}]
    upload(daemon, "edits", [orjson.dumps(line).decode() for line in claude + codex + reminded])
    open_whole(browser, f"{daemon.http}/fulab/lab/?session=edits")
    diffs = js(browser, "return [...document.querySelectorAll('.diff')].map(d => [d.querySelector('.diff-path')"
                        ".textContent, [...d.querySelectorAll('.dl')].map(l => l.textContent)])")
    assert diffs == [
        ["/r/a.txt · edit 1 of 2 +1 −1", ["@@ -1,2 +1,2 @@", " one", "-two", "+2"]],
        ["/r/a.txt · edit 2 of 2 +1 −1", ["@@ -1,1 +1,1 @@", "-x", "+y"]],
        ["/r/new.txt · new file +2 −0", ["+fresh", "+file"]],
        ["/r/n.ipynb · insert cell c3 +1 −0", ["+import os"]],
        ["src/app.py +1 −1", ["@@ def main():", "-    print('hi')", "+    print('hello')"]],
    ]
    prompt = browser.find_element(By.CSS_SELECTOR, ".row[data-line='3'] article.ev-user")
    assert prompt.find_element(By.CSS_SELECTOR, ".markdown strong").text == "parser"  # the prompt is shown
    assert "be brief" not in prompt.text, prompt.text
    assert "context" in prompt.find_element(By.CSS_SELECTOR, "details.context").text.lower()
    card = browser.find_element(By.CSS_SELECTOR, ".tool-card[data-call-id='p1']")
    assert "ok" in card.get_attribute("class").split() and "1.0 s" in card.text


PARITY = [
    "**bold**, *italic*, `code` and ~~struck~~",
    "# Heading\n\nA paragraph\nwith a soft break.\n\n---\n\n> quoted\n> text",
    "- one\n- two\n  - nested\n\n1. first\n2. second",
    "```python\ndef f(x):\n    return x < 1 and '&'\n```\n\n    indented code",
    "| left | right | mid |\n|:--|--:|:-:|\n| a | b | c |",
    *XSS[:2], XSS[3], XSS[4], XSS[6], XSS[7],
]


def test_the_html_export_renders_markdown_exactly_as_the_page_does(daemon, browser):
    from fulabd.export_html import renderer

    upload(daemon, "parity", xss_session()[:1])
    browser.get(f"{daemon.http}/fulab/lab/?session=parity")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "conn"), "live"))
    shown = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; import('./render/markdown.js').then(m => done("
        "arguments[0].map(text => { const node = document.createElement('div'); m.renderMarkdown(node, text);"
        " return node.innerHTML; })))", PARITY)
    exported = js(browser, "return arguments[0].map(html => { const node = document.createElement('div');"
                           " node.innerHTML = html; return node.innerHTML; })",  # the same serializer for both
                  [renderer().render(text) for text in PARITY])
    assert shown == exported
