"""
Search, PARs and /rap against the real daemon and its real SQLite index: a word
planted at a known line is found there soon after its ack, and after the index
is deleted (or damaged, or the daemon killed mid-indexing) the same queries
give the same results; the query language, filters, pagination and hostile
queries; the old `/rap` shape.
"""

import os
import random
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
from websockets.sync.client import connect

from tests.fixtures import Daemon, get_json, sample_files, sample_lines

pytestmark = pytest.mark.slow

PLANTED = "zyxquorble"
QUESTIONS = {"intention": "Find the flaky test", "happening": "It depended on ordering",
             "perspectives": "The reviewer saw it first", "learned": "Tests must not share state",
             "forward": "Randomize the order in CI"}


def user_line(text: str, timestamp: str = "2026-03-04T05:06:07Z") -> str:
    return orjson.dumps({"type": "user", "timestamp": timestamp,
                         "message": {"role": "user", "content": text}}).decode()


def tool_line(command: str, timestamp: str = "2026-03-04T05:06:08Z") -> str:
    return orjson.dumps({"type": "assistant", "timestamp": timestamp, "message": {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": command}}]}}).decode()


def upload(daemon, session_id: str, lines: list[str], source: str = "claude", pars=()):
    with connect(daemon.url + "/fulab/lab/upload/ws", max_size=None) as ws:
        for message in [{"type": "init", "source": source, "project": f"/home/dev/{source}", "events": lines},
                        *({"type": "par", "par": par} for par in pars)]:
            ws.send(orjson.dumps({"session-id": session_id, **message}).decode())
            reply = orjson.loads(ws.recv(timeout=30))
            assert reply["type"] == "ack", reply


def api(daemon, path: str, **params):
    return get_json(f"{daemon.http}/fulab/lab/{path}?{urllib.parse.urlencode(params)}")


def refused(daemon, path: str, **params) -> tuple[int, dict]:
    try:
        answer = api(daemon, path, **params)
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())
    raise AssertionError(f"{path} {params} was answered: {answer}")


def wait_for(fetch, done, timeout: float = 60):
    """Poll `fetch()` until `done(value)`, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {value}"
        time.sleep(0.02)


def caught_up(daemon, q: str = "the") -> dict:
    return wait_for(lambda: api(daemon, "search", q=q), lambda answer: answer["caught-up"])


def every_hit(daemon, **params) -> list[dict]:
    """Every page of a search, through its cursors."""
    hits, cursor = [], None
    while True:
        answer = api(daemon, "search", **params, **({"cursor": cursor} if cursor else {}))
        hits += answer["hits"]
        cursor = answer["cursor"]
        if cursor is None:
            return hits


def located(hits: list[dict]) -> list[tuple]:
    return sorted((hit["session-id"], hit["line"], hit["kind"]) for hit in hits)


def claude_sample() -> list[str]:
    return sample_lines(next(path for path in sample_files() if path.name.startswith("1af7fc5e")))


def codex_sample() -> list[str]:
    return sample_lines(next(path for path in sample_files() if "codex" in path.parts))


@pytest.fixture
def stored(daemon):
    """A Claude session with a planted word at line 12 and a PAR, and a Codex session ending in a shell
    command; both searchable."""
    lines = claude_sample()
    lines.insert(12, user_line(f"please check the {PLANTED} before lunch"))
    upload(daemon, "claude-1", lines, "claude",
           pars=[{"title": "Flaky test hunt", "tags": ["flaky", "ci"], "questions": QUESTIONS}])
    upload(daemon, "codex-1", codex_sample() + [tool_line("rm -rf build/out && make", "2026-03-05T00:00:00Z")],
           "codex")
    caught_up(daemon)
    return lines


def test_a_planted_word_is_found_at_its_line_soon_after_its_ack(daemon):
    lines = claude_sample()
    upload(daemon, "claude-1", lines)
    upload(daemon, "claude-1", lines + [user_line(f"where is the {PLANTED}?")])
    answer = wait_for(lambda: api(daemon, "search", q=PLANTED), lambda answer: answer["hits"])
    assert [(hit["session-id"], hit["id"], hit["line"], hit["kind"]) for hit in answer["hits"]] == [
        ("claude-1", "claude-1", len(lines), "user")]
    assert {"text": PLANTED, "match": True} in answer["hits"][0]["snippet"]
    assert api(daemon, "search", q="notawordanywhere")["hits"] == []


def test_after_the_index_is_deleted_or_damaged_the_same_queries_give_the_same_results(daemon, stored):
    queries = [{"q": PLANTED}, {"q": "todo"}, {"q": '"rm -rf"'}, {"q": "flak*"}, {"q": "the", "kind": "user"},
               {"q": "tests", "kind": "par"}]
    before = [located(every_hit(daemon, **query, limit=100)) for query in queries]
    assert all(before) and before[0] == [("claude-1", 12, "user")]
    index = daemon.root / ".index"
    daemon.stop()
    shutil.rmtree(index)
    daemon.start()
    caught_up(daemon)
    assert [located(every_hit(daemon, **query, limit=100)) for query in queries] == before
    assert sorted(entry["id"] for entry in api(daemon, "sessions")["sessions"]) == ["claude-1", "codex-1"]
    daemon.stop()
    (index / "search.sqlite3").write_bytes(b"this is not a database" * 1000)
    for leftover in index.glob("search.sqlite3-*"):
        leftover.unlink()
    daemon.start()
    daemon.wait_for_log(r"search index .* is damaged")
    caught_up(daemon)
    assert [located(every_hit(daemon, **query, limit=100)) for query in queries] == before


def test_phrases_prefixes_and_filters(daemon, stored):
    assert located(api(daemon, "search", q=f'"check the {PLANTED}"')["hits"]) == [("claude-1", 12, "user")]
    assert api(daemon, "search", q=f'"{PLANTED} the check"')["hits"] == []
    assert located(api(daemon, "search", q="zyxquor*")["hits"]) == [("claude-1", 12, "user")]
    assert api(daemon, "search", q="zyxquorz*")["hits"] == []
    assert located(api(daemon, "search", q='"rm -rf" make')["hits"]) == [("codex-1", len(codex_sample()), "tool")]
    assert api(daemon, "search", q=PLANTED, source="codex")["hits"] == []
    assert api(daemon, "search", q=PLANTED, source="claude")["hits"]
    assert api(daemon, "search", q=PLANTED, project="/home/dev/claude")["hits"]
    assert api(daemon, "search", q=PLANTED, session="codex-1")["hits"] == []
    assert api(daemon, "search", q=PLANTED, session="claude-1")["hits"]
    assert api(daemon, "search", q=PLANTED, kind="tool,assistant")["hits"] == []
    assert api(daemon, "search", q=PLANTED, kind="user")["hits"]
    assert api(daemon, "search", q=PLANTED, since="2026-03-04T05:06:07Z", until="2026-03-04T05:06:08Z")["hits"]
    assert api(daemon, "search", q=PLANTED, since="2026-03-04T05:06:08Z")["hits"] == []
    assert api(daemon, "search", q=PLANTED, until="2026-03-04")["hits"] == []
    par_hits = api(daemon, "search", q="state", kind="par")["hits"]
    assert [(hit["session-id"], hit["kind"], hit["par-index"]) for hit in par_hits] == [("claude-1", "par", 0)]


def test_pages_follow_each_other_without_gaps_or_repeats(daemon, stored):
    everything = api(daemon, "search", q="the", limit=10)
    assert everything["cursor"] is not None  # more than 10 hits: the pages below go past the first 10
    pages = []
    answer = {"cursor": None}
    while True:
        answer = api(daemon, "search", q="the", limit=3, **({"cursor": answer["cursor"]} if answer["cursor"] else {}))
        assert len(answer["hits"]) <= 3
        pages += answer["hits"]
        if answer["cursor"] is None:
            break
    assert pages[:10] == everything["hits"]
    assert len({(hit["session-id"], hit["line"], hit["kind"], orjson.dumps(hit["snippet"])) for hit in pages}) == len(
        pages)
    other_query = everything["cursor"]
    assert refused(daemon, "search", q="todo", cursor=other_query)[1]["err"] == "bad-cursor"
    assert refused(daemon, "search", q="the", cursor="garbage!")[1]["err"] == "bad-cursor"


@pytest.mark.parametrize("q", ['"unbalanced', "NEAR(a b)", "a OR b", "NOT this", "body:secret", "{body}: x",
                               "^start", "x" * 501, "*", "a*", "mid*dle", "", "   ", "!!! ...",
                               " ".join(f"w{i}" for i in range(17))])
def test_hostile_or_malformed_queries_are_a_clear_400(daemon, q):
    code, body = refused(daemon, "search", q=q)
    assert (code, body["ok"], body["err"]) == (400, False, "bad-query")
    assert body["detail"]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "many"}, {"limit": "101"}, {"since": "yesterday"},
                                    {"until": "2026-13-45"}, {"kind": "everything"}, {"source": "x" * 1001}])
def test_malformed_filters_are_a_clear_400(daemon, params):
    code, body = refused(daemon, "search", q="todo", **params)
    assert (code, body["err"]) == (400, "bad-filter")


def test_fts_syntax_inside_quotes_is_only_text(daemon, stored):
    for q in ['"NEAR(a b)"', '"body:x"', '"a OR b"', '"*"x', "'; DROP TABLE docs; --", "C:\\x", "localhost:8080"]:
        assert api(daemon, "search", q=q)["ok"] is True
    assert api(daemon, "search", q=PLANTED)["hits"]


def test_edn(daemon, stored):
    with urllib.request.urlopen(f"{daemon.http}/fulab/lab/search?q={PLANTED}&format=edn", timeout=30) as response:
        assert response.headers["content-type"].startswith("application/edn")
        body = response.read().decode()
    assert ':session-id "claude-1"' in body and ":line 12" in body


def test_pars_across_sessions_newest_first_with_tag_and_text_filters(daemon, stored):
    upload(daemon, "codex-1", codex_sample(), "codex",
           pars=[{"title": "Shell habits", "tags": ["shell"], "timestamp": "2099-01-01T00:00:00Z",
                  "questions": {"learned": "Quote the paths"}}])
    pars = wait_for(lambda: api(daemon, "pars"), lambda answer: len(answer["pars"]) == 2)["pars"]
    assert [(par["session-id"], par["par"]["title"]) for par in pars] == [("codex-1", "Shell habits"),
                                                                          ("claude-1", "Flaky test hunt")]
    assert all(par["id"] and par["session-title"] for par in pars)
    assert [par["session-id"] for par in api(daemon, "pars", tags="ci,nothing")["pars"]] == ["claude-1"]
    assert [par["session-id"] for par in api(daemon, "pars", q="quote paths")["pars"]] == ["codex-1"]
    assert [par["session-id"] for par in api(daemon, "pars", since="2098-01-01")["pars"]] == ["codex-1"]
    assert [par["session-id"] for par in api(daemon, "pars", limit=1)["pars"]] == ["codex-1"]


def test_rap_answers_an_old_client_in_the_old_shape(daemon, stored):
    answer = api(daemon, "rap", tags="flaky", limit=5)
    assert set(answer) == {"ok", "count", "pars", "context"}
    assert (answer["ok"], answer["count"]) == (True, 1)
    [par] = answer["pars"]
    assert set(par) == {"id", "session-id", "title", "timestamp", "tags", "learned"}
    assert (par["session-id"], par["title"], par["tags"], par["learned"]) == (
        "claude-1", "Flaky test hunt", ["flaky", "ci"], QUESTIONS["learned"])
    assert answer["context"] == (
        "# Prior Learning (from 1 PARs)\n\n"
        "## Flaky test hunt\n"
        f"*Session: claude-1 | {par['timestamp']}*\n"
        "*Tags: flaky, ci*\n\n"
        f"**Intention:** {QUESTIONS['intention']}\n\n"
        f"**What happened:** {QUESTIONS['happening']}\n\n"
        f"**Perspectives:** {QUESTIONS['perspectives']}\n\n"
        f"**Learned:** {QUESTIONS['learned']}\n\n"
        f"**Forward:** {QUESTIONS['forward']}\n")
    assert api(daemon, "rap", tags="nothing") == {"ok": True, "count": 0, "pars": [], "context": None}
    assert api(daemon, "rap", since="2099-01-01")["count"] == 0


def test_local_sessions_are_searched_and_followed(tmp_path):
    lines = claude_sample()
    folder = tmp_path / "claude" / "-home-dev-app"
    folder.mkdir(parents=True)
    local = folder / "5e2b3c4d-0000-4000-8000-000000000001.jsonl"
    local.write_text("\n".join(lines + [user_line(f"the local {PLANTED}")]) + "\n")
    daemon = Daemon(tmp_path / "remote", "--claude-dir", str(tmp_path / "claude")).start()
    try:
        hit = wait_for(lambda: api(daemon, "search", q=PLANTED), lambda answer: answer["hits"])["hits"][0]
        assert (hit["id"], hit["line"], hit["source"]) == (local.stem, len(lines), "claude")
        with local.open("a") as f:
            f.write(user_line("appended later: quixotrangle") + "\n")
        hit = wait_for(lambda: api(daemon, "search", q="quixotrangle"), lambda answer: answer["hits"])["hits"][0]
        assert (hit["id"], hit["line"]) == (local.stem, len(lines) + 1)
    finally:
        daemon.stop()


def test_a_daemon_killed_mid_indexing_loses_nothing_and_duplicates_nothing(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    rng = random.Random(7)
    vocabulary = [f"{rng.choice('bcdfghklmnprstvz')}{rng.choice('aeiou')}{rng.choice('lmnrst')}{i}"
                  for i in range(5000)]
    count = 20_000
    with open(root / "big.jsonl", "w") as f:
        for i in range(count):
            filler = " ".join(rng.choices(vocabulary, k=250))
            f.write(user_line(f"line{i} common{i % 100} {filler}") + "\n")
    daemon = Daemon(root).start()
    try:
        answer = wait_for(lambda: api(daemon, "search", q="common7", limit=100), lambda answer: answer["hits"])
        assert not answer["caught-up"], "indexing finished before the kill: make the file larger"
        daemon.kill()
        daemon.start()
        caught_up(daemon, q="common7")
        assert not any("is damaged" in line for line in daemon.log)  # resumed where it was, not rebuilt
        for word in ("common7", "common42", "common99"):
            lines = [hit["line"] for hit in every_hit(daemon, q=word, limit=100)]
            assert sorted(lines) == list(range(int(word[6:]), count, 100))
    finally:
        daemon.stop()


def index_worker_pid(daemon) -> int:
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children").read_text().split()
    [pid] = [int(child) for child in children if b"fulabd.index.worker" in Path(f"/proc/{child}/cmdline").read_bytes()]
    return pid


def test_the_index_worker_runs_only_on_idle_cpu(daemon, stored):
    """Indexing may lag under load, but never takes the CPU from the daemon's acks."""
    assert os.sched_getscheduler(index_worker_pid(daemon)) == os.SCHED_IDLE
    assert os.sched_getscheduler(daemon.process.pid) == os.SCHED_OTHER


def test_an_index_worker_that_dies_is_started_again_and_catches_up(daemon, stored):
    os.kill(index_worker_pid(daemon), signal.SIGKILL)
    daemon.wait_for_log(r"the index worker stopped .*started again in")
    upload(daemon, "claude-2", [user_line("after the crash came the quetzalcoatlus")])
    answer = wait_for(lambda: api(daemon, "search", q="quetzalcoatlus"), lambda answer: answer["hits"])
    assert located(answer["hits"]) == [("claude-2", 0, "user")]
    assert located(api(daemon, "search", q=PLANTED)["hits"]) == [("claude-1", 12, "user")]  # nothing twice
    assert caught_up(daemon)["caught-up"]
    worker = index_worker_pid(daemon)
    daemon.stop()
    assert not Path(f"/proc/{worker}").exists()
    assert not any("did not stop" in line for line in daemon.log)  # it ended with its input, unkilled


def test_a_worker_given_unreadable_news_says_so_and_ends(tmp_path):
    import subprocess
    import sys

    from fulabd.index.feeder import WORKER

    done = subprocess.run([sys.executable, "-c", WORKER, str(Path(__file__).resolve().parent.parent),
                           str(tmp_path / ".index")], input=b"this is not json\n", capture_output=True, timeout=60)
    said = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and {"reset": True} in said
    assert any("unreadable news" in message.get("text", "") for message in said), said


def test_no_index_turns_search_off(tmp_path):
    daemon = Daemon(tmp_path / "remote", "--no-index").start()
    try:
        for path in ("search", "pars", "rap"):
            code, body = refused(daemon, path, q="todo")
            assert (code, body["err"]) == (503, "search-off")
        assert not (tmp_path / "remote" / ".index").exists()
    finally:
        daemon.stop()
