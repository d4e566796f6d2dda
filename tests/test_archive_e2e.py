"""
Archived sessions of a real daemon (`--archive-dir`): futon3 archives built
from the real samples listed in the old shape, merged into the listing, and
opened in the viewer with their messages in order.
"""

import urllib.error
import urllib.request

import orjson
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.archives import conversation, futon3_archive, write_archives
from tests.fixtures import Daemon, get_json
from tests.test_stream_e2e import read_history, store, viewer

pytestmark = pytest.mark.slow

PAR = {"timestamp": "2025-09-03T01:00:00Z", "text": "## PAR: Wrap-up\n\n**Learned:** archives", "par-id": "par-old",
       "tags": ["stack-hud"]}


def post_par(daemon, ident: str):
    request = urllib.request.Request(f"{daemon.http}/fulab/lab/sessions/{ident}/pars", method="POST",
                                     data=orjson.dumps({"title": "late"}), headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    return refused.value


@pytest.fixture
def archived(tmp_path):
    folder = tmp_path / "lab" / "raw"
    samples = write_archives(folder)
    claude = next(ident for ident, path in samples.items() if "rollout-" not in path.name)
    (folder / f"{claude}.json").write_bytes(orjson.dumps(futon3_archive(samples[claude], pars=[PAR])))
    (folder / "broken.json").write_bytes(b'{"lab/session-id": ')
    daemon = Daemon(tmp_path / "remote", "--archive-dir", str(folder)).start()
    daemon.wait_for_log(r"listing \d+ archived sessions")
    daemon.samples, daemon.folder, daemon.with_par = samples, folder, claude
    yield daemon
    daemon.stop()


def test_archives_are_listed_in_the_old_shape_and_merged(archived):
    store(archived, "uploaded", ['{"a":1}'])
    old = get_json(archived.http + "/fulab/lab/sessions/archived")
    assert old["ok"] is True
    entries = {entry["session-id"]: entry for entry in old["sessions"]}
    assert set(entries) == set(archived.samples) | {"broken"}
    for ident, entry in entries.items():
        assert {"id", "path", "modified", "size-kb", "archived"} <= set(entry) and entry["archived"] is True
        assert entry["path"] == str(archived.folder / f"{ident}.json")
    assert "not valid JSON" in entries["broken"]["error"]
    assert archived.wait_for_log(r"broken\.json is malformed")

    merged = {entry["session-id"]: entry for entry in get_json(archived.http + "/fulab/lab/sessions")["sessions"]}
    assert set(merged) == set(entries) | {"uploaded"}
    for ident, sample in archived.samples.items():
        entry = merged[ident]
        assert (entry["archived"], entry["source"], entry["events"], entry["active"]) == (
            True, "codex" if "rollout-" in sample.name else "claude", len(conversation(sample)), False)
    assert merged[archived.with_par]["pars"] == 1 and "archived" not in merged["uploaded"]
    refused = post_par(archived, archived.with_par)
    assert (refused.code, orjson.loads(refused.read())["err"]) == (404, "unknown-session")
    active = {entry["session-id"] for entry in get_json(archived.http + "/fulab/lab/sessions/active")["sessions"]}
    assert active == {"uploaded"}


def test_an_archive_opens_in_the_viewer_with_its_messages_in_order_and_its_pars(archived):
    ident = archived.with_par
    expected = [(event["type"], event["text"], event["timestamp"]) for event in conversation(archived.samples[ident])]
    path = str(archived.folder / f"{ident}.json")
    for query in ({"session": ident}, {"path": path}):
        url_path = "/fulab/lab/stream/ws" if "session" in query else "/"
        with viewer(archived, url_path, **query) as ws:
            head, history, end = read_history(ws)
        assert (head["session-id"], head["path"], head["line-count"], head["par-count"]) == (
            ident, path, len(expected), 1)
        messages = [event for event in history if event["type"] != "par"]
        assert [(event["type"], event["text"], event["timestamp"]) for event in messages] == expected
        assert [event["line"] for event in messages] == list(range(len(expected)))
        (par,) = [event for event in history if event["type"] == "par"]
        assert (par["text"], par["title"], par["par-id"]) == (PAR["text"], "Wrap-up", "par-old")


def test_an_archive_opens_from_the_ui_list_with_its_messages_and_par(archived, browser):
    ident = archived.with_par
    expected = [event["type"] for event in conversation(archived.samples[ident])]
    browser.get(archived.http + "/fulab/lab/")
    wait = WebDriverWait(browser, 30)
    row = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"tr[data-id='{ident}']")))
    row.find_element(By.CSS_SELECTOR, "td.name a").click()
    wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"article.event[data-line='{len(expected) - 1}']")))
    shown = browser.execute_script("return [...document.querySelectorAll('article.event')]"
                                   ".map(e => [Number(e.dataset.line), e.className])")
    assert [line for line, _ in shown] == list(range(len(expected)))
    assert [f"ev-{kind}" in classes.split() for (_, classes), kind in zip(shown, expected)] == [True] * len(expected)
    card = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "article.par-card")))
    assert "Wrap-up" in card.text and "archives" in card.text


def test_without_archive_folders_the_archived_listing_is_empty(daemon):
    assert get_json(daemon.http + "/fulab/lab/sessions/archived") == {"ok": True, "sessions": []}
