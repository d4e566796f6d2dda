"""
Start-up reads what the meta records instead of the files while the files
still have the recorded sizes, and recounts a session whose meta disagrees.
"""

import edn_format

from fulabd import edn
from tests.test_store import make_store, result_of

K = edn_format.Keyword


def write_session(root, lines: bytes, meta: dict, pars: bytes | None = None):
    (root / "s.jsonl").write_bytes(lines)
    (root / "s.meta.edn").write_bytes(edn.dumps({"session-id": "s"} | meta))
    if pars is not None:
        (root / "s.par.edn").write_bytes(pars)


def test_a_meta_that_matches_the_files_sizes_is_trusted_without_reading_them(tmp_path, monkeypatch):
    def not_read(*args):
        raise AssertionError("start-up read a file whose meta records its size")

    monkeypatch.setattr("fulabd.store.recovery.count_lines", not_read)
    monkeypatch.setattr("fulabd.store.recovery.cut_torn_tail", not_read)
    pars = edn.dumps([{"id": "p", "title": "t"}])
    # The meta's counts are taken as they are (the files are not read) while the sizes match.
    write_session(tmp_path, b"a\nb\n", {"event-count": 2, "jsonl-bytes": 4, "par-count": 1,
                                       "par-bytes": len(pars)}, pars)
    store, _ = make_store(tmp_path)
    session = store.get("s")
    assert (session.count, session.size, session.par_count, session.pars) == (2, 4, 1, None)


def test_a_meta_that_disagrees_with_its_files_is_recounted_and_rewritten(tmp_path):
    pars = edn.dumps([{"id": "p", "title": "t"}, {"id": "q", "title": "u"}])
    write_session(tmp_path, b"a\nb\nc\ntorn", {"event-count": 2, "jsonl-bytes": 4, "par-count": 1,
                                               "par-bytes": 3}, pars)
    store, clock = make_store(tmp_path)
    session = store.get("s")
    assert (session.count, session.size, session.par_count) == (3, 6, 2)
    assert (tmp_path / "s.jsonl").read_bytes() == b"a\nb\nc\n"
    clock.advance(1.0)
    meta = edn_format.loads((tmp_path / "s.meta.edn").read_text())
    assert (meta[K("event-count")], meta[K("jsonl-bytes")], meta[K("par-count")], meta[K("par-bytes")]) == (
        3, 6, 2, len(pars))


def test_an_old_meta_without_sizes_is_counted_once_and_then_carries_them(tmp_path):
    write_session(tmp_path, b"a\nb\n", {"event-count": 2, "par-count": 0})
    store, clock = make_store(tmp_path)
    assert store.get("s").count == 2
    result_of(store.append("s", 2, [b"c"]))
    clock.advance(1.0)
    meta = edn_format.loads((tmp_path / "s.meta.edn").read_text())
    assert (meta[K("event-count")], meta[K("jsonl-bytes")]) == (3, 6)
