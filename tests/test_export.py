"""
Session exports: `GET /fulab/lab/sessions/<id>/export?format=md|html` on a real daemon
for every sample (the Markdown parses back with its prompts and PAR titles; the HTML
is one file with no script, no external reference and no XSS payload as markup), and
the document builder in memory.
"""

import re
from html.parser import HTMLParser
import urllib.error
import urllib.request
from types import SimpleNamespace

import orjson
import pytest
from markdown_it import MarkdownIt

from twisted.internet import defer
from twisted.web import server
from twisted.web.test.requesthelper import DummyRequest

from fulabd import export
from fulabd.catalog import StoreSource
from fulabd.export import SessionExport
from fulabd.web import describe
from fulabd.events import normalize
from tests.fixtures import sample_files, sample_lines
from tests.test_store import make_store, result_of
from tests.test_ui_reader import XSS, post_par, upload, xss_session

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


def events_of(lines: list[str]) -> list[dict]:
    return [event for index, raw in enumerate(lines) if (event := normalize(raw.encode(), index)) is not None]


def prompts(events: list[dict]) -> list[str]:
    """The first line of each prompt a person typed (what the export must keep)."""
    return [event["text"].strip().splitlines()[0] for event in events
            if event["type"] == "user" and not event.get("blocks") and not export.is_context(event)
            and event.get("text", "").strip() and not export.SLASH.search(event["text"])]


def inline_text(markdown: str) -> str:
    tokens = MarkdownIt("default").parse(markdown)
    return "\n".join(token.content for token in tokens if token.type in ("inline", "fence"))


class Tags(HTMLParser):
    """The element and attribute names of an HTML document."""

    def __init__(self):
        super().__init__()
        self.names, self.attributes = set(), set()

    def handle_starttag(self, tag, attrs):
        self.names.add(tag)
        self.attributes |= {name for name, _ in attrs}


def fetch(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


@pytest.mark.slow
def test_every_sample_exports_as_markdown_and_self_contained_html(daemon):
    for n, sample in enumerate(sample_files()):
        lines = sample_lines(sample)
        entry = upload(daemon, f"sample-{n}", lines)
        post_par(daemon, entry, {"title": f"Review of sample {n}", "lines": [0, 1], "questions": {"learned": "ok"}})
        base = f"{daemon.http}/fulab/lab/sessions/{entry['id']}/export"

        status, headers, text = fetch(base + "?format=md")
        assert status == 200 and headers.get_content_type() == "text/markdown", sample
        assert f'filename="{entry["id"]}.md"' in headers["content-disposition"]
        parsed = inline_text(text)
        for prompt in prompts(events_of(lines)):
            assert prompt.lstrip("#>-* ")[:60] in parsed, (sample.name, prompt)
        headings = [token for token in MarkdownIt("default").parse(text) if token.type == "inline"]
        assert any(token.content == f"Review of sample {n} (lines 0–1)" for token in headings), sample

        status, headers, page = fetch(base + "?format=html")
        assert status == 200 and headers.get_content_type() == "text/html", sample
        assert page.startswith("<!doctype html>") and "<script" not in page.lower()
        assert not EXTERNAL.search(page), EXTERNAL.search(page)
        assert f"Review of sample {n}" in page and "<link" not in page


@pytest.mark.slow
def test_no_xss_payload_becomes_markup_in_an_export_and_a_bad_format_is_refused(daemon):
    entry = upload(daemon, "xss", xss_session())
    for payload in XSS:
        post_par(daemon, entry, {"title": f"PAR {payload}", "questions": {"learned": payload}})
    base = f"{daemon.http}/fulab/lab/sessions/{entry['id']}/export"
    _, headers, page = fetch(base + "?format=html")
    assert "default-src 'none'" in headers["content-security-policy"]
    tags = Tags()
    tags.feed(page)
    assert not tags.names & {"script", "img", "svg", "iframe", "textarea", "a", "link", "object", "embed"}, tags.names
    assert not [name for name in tags.attributes if name.startswith("on")], tags.attributes
    assert "&lt;script&gt;" in page and "<strong>bold</strong>" in page
    _, _, text = fetch(base + "?format=md")
    assert "```diff" in text and "-<img src=x onerror" in text  # the Edit's diff, as text in a fence

    status, _, message = fetch(base + "?format=pdf")
    assert status == 400 and "format=md" in message
    status, _, _ = fetch(f"{daemon.http}/fulab/lab/sessions/no-such-session/export?format=md")
    assert status == 404


def test_the_markdown_pairs_each_call_with_its_result_and_shows_edits_as_diffs():
    sample = next(path for path in sample_files() if path.name.startswith("fe5e1c67"))
    events = export.normalized([line.encode() for line in sample_lines(sample)])
    session = SimpleNamespace(session_id="fe5e1c67", safe_id="fe5e1c67")
    text = export.markdown(session, {"project": "/path/to/Demo"}, events, [])
    assert text.startswith("# Demo\n")
    calls = sum(1 for event in events for block in export.blocks(event) if block["type"] == "tool_use")
    assert len(re.findall(r"^\*\*Tool \S+\*\* .*\((ok|error|no result yet)", text, re.M)) == calls
    assert "-import { useReducer, useEffect, useMemo, useCallback } from 'react';" in text
    assert "+'use client';" in text
    assert "No PARs." in text


def test_a_fence_is_longer_than_any_backtick_run_inside_it():
    block = export.fence("a ```` b", "text")
    assert block.startswith("`````text\n") and block.endswith("\n`````")
    assert MarkdownIt().parse(block)[0].content == "a ```` b\n"


def test_an_apply_patch_becomes_a_unified_diff_per_file():
    patch = "*** Begin Patch\n*** Update File: a.py\n@@ def f\n-x\n+y\n*** Add File: b.txt\n+new\n*** End Patch"
    diff = export.tool_diff("apply_patch", patch)
    assert diff.splitlines() == ["--- a/a.py", "+++ b/a.py", "@@ def f", "-x", "+y", "--- /dev/null", "+++ b/b.txt",
                                 "+new"]
    assert export.tool_diff("shell", orjson.dumps({"command": ["apply_patch", patch]}).decode()) == diff


def export_request(resource, query: dict) -> tuple[DummyRequest, bytes]:
    request = DummyRequest([b""])
    request.args = {key.encode(): [value.encode()] for key, value in query.items()}
    body = resource.render_GET(request)
    return request, b"".join(request.written) if body == server.NOT_DONE_YET else body


def test_the_export_resource_reads_the_store_and_renders_off_the_reactor(tmp_path):
    sample = next(path for path in sample_files() if path.name.startswith("1af7fc5e"))
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [line.encode() for line in sample_lines(sample)], {"project": "/p/todo"}))
    result_of(store.add_par("s", {"title": "Review", "lines": [3, 5]}))
    session = store.get("s")
    threaded = []

    def run_in_thread(f, *args):
        threaded.append(f)
        return defer.maybeDeferred(f, *args)

    resource = SessionExport(StoreSource(store), session, lambda s: describe(s, s.modified, 0.0), run_in_thread)
    request, body = export_request(resource, {"format": "md"})
    assert threaded == [export.document] and request.finished
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/markdown; charset=utf-8"]
    text = body.decode()
    assert text.startswith("# todo\n") and "### Review (lines 3–5)" in text and "| lines | 29 |" in text

    request, body = export_request(resource, {"format": "html"})
    assert body.startswith(b"<!doctype html>") and b"<h3>Review (lines 3\xe2\x80\x935)</h3>" in body

    request, body = export_request(resource, {"format": "pdf"})
    assert request.responseCode == 400 and b"format=md" in body


def test_a_failed_export_answers_500_and_says_to_try_again(tmp_path):
    store, _ = make_store(tmp_path)
    result_of(store.append("s", 0, [b'{"type":"user"}']))
    session = store.get("s")
    resource = SessionExport(StoreSource(store), session, lambda s: describe(s, s.modified, 0.0),
                             lambda f, *args: defer.fail(RuntimeError("disk gone")))
    request, body = export_request(resource, {"format": "md"})
    assert request.responseCode == 500 and b"try again" in body
