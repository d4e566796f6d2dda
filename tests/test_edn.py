"""
The direct EDN reader gives what edn_format gives, for what the daemon writes
and for anything else (which it hands to edn_format).
"""

import random
import string

import edn_format
import pytest

from fulabd import edn


def reference(data: bytes):
    return edn.from_edn(edn_format.loads(data.decode("utf-8")))


@pytest.mark.parametrize("data", [
    b'{:a "\xc3\xa9\\n\\t\\"\\\\ x\\u0001" :b [1 2.5 nil true {:c -3}] :tags [:x] "k w" 1}',
    b'[{:id "p" :n -0.5e3 :x/y 3}]', b"{}", b"[]", b" {:a 1} ", b'{:a #inst "2020-01-01T00:00:00Z"}',
    b"#{1 2}", b"(1 2)", b"{:a sym}", b"{:a 1N}", b"{:a :b/c}", b'{:a "\\u00e9"}', b'{"x" 1, :y 2}',
    b"{:a ;c\n 1}", b"{:a 1e-07}",
])
def test_the_direct_reader_agrees_with_edn_format(data):
    assert edn.loads(data) == reference(data)


@pytest.mark.parametrize("data", [b"[1 2", b"{:a}", b"{:a 1 :b}"])
def test_what_edn_format_refuses_is_refused(data):
    with pytest.raises(Exception):
        reference(data)
    with pytest.raises(Exception):
        edn.loads(data)


def test_everything_the_daemon_writes_reads_back_the_same_as_with_edn_format():
    rng = random.Random(1)

    def value(depth=0):
        pick = rng.random()
        if depth < 3 and pick < 0.2:
            return {rng.choice(["a", "b c", "x/y", ":k", "é", ""]): value(depth + 1) for _ in range(rng.randint(0, 3))}
        if depth < 3 and pick < 0.35:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if pick < 0.5:
            return rng.randint(-10 ** 6, 10 ** 6)
        if pick < 0.6:
            return rng.random() * 1e5
        if pick < 0.7:
            return rng.choice([True, False, None])
        return "".join(rng.choice(string.printable + "é\u2028\"\\") for _ in range(rng.randint(0, 12)))

    for _ in range(2000):
        data = edn.dumps({"tags": [rng.choice(["a", "b c", ":z"])], "m": value()}, frozenset({"tags"}))
        assert edn.loads(data) == reference(data), data


def test_every_key_reads_back_as_itself_and_apart_from_the_others():
    """`k` and `:k` are two JSON keys: written as one keyword, one of them was lost on disk.  A name ending in
    `:` or holding `::`, or whose namespace ends in `:`, is no keyword Clojure reads, so it stays a string."""
    value = {"k": 1, ":k": 2, "k:": 3, "a::b": 4, "ns/name": 5, "a:/b": 6, "tags": [":flaky", "ci", "z:/w"]}
    written = edn.dumps(value, keyword_values=frozenset({"tags"}))
    assert edn.loads(written) == value | {"tags": ["flaky", "ci", "z:/w"]}
    assert b":k 1" in written and b'":k" 2' in written and b'"k:" 3' in written and b'"a::b" 4' in written
    assert b":ns/name 5" in written and b'"a:/b" 6' in written and b'[:flaky :ci "z:/w"]' in written
