"""
A PAR may be about a range of the session's lines, `lines: [first, last]`: the HTTP
body's check accepts it or says what is wrong, and the viewer event carries it.
"""

import orjson
import pytest

from fulabd.events import par_event
from fulabd.pars import BadPar, par_from_body


def test_a_par_about_lines_keeps_its_range_and_one_without_has_none():
    assert par_from_body(orjson.dumps({"title": "t", "lines": [3, 9]}))["lines"] == [3, 9]
    assert par_from_body(orjson.dumps({"title": "t", "lines": [4, 4]}))["lines"] == [4, 4]
    assert "lines" not in par_from_body(orjson.dumps({"title": "t"}))
    assert "lines" not in par_from_body(orjson.dumps({"title": "t", "lines": None}))


@pytest.mark.parametrize("lines, fragment", [
    ([3], "[first, last]"), ([1, 2, 3], "[first, last]"), ("3-9", "[first, last]"), ([-1, 2], "0 or more"),
    ([1.5, 2], "integers"), ([True, 2], "integers"), ([9, 3], "must not come after"),
])
def test_a_bad_range_is_refused_with_what_to_fix(lines, fragment):
    with pytest.raises(BadPar) as refused:
        par_from_body(orjson.dumps({"title": "t", "lines": lines}))
    assert fragment in str(refused.value)


def test_the_viewer_event_of_a_par_carries_its_range_only_when_it_has_one():
    assert par_event({"title": "t", "lines": [2, 5]}, 0)["lines"] == [2, 5]
    assert "lines" not in par_event({"title": "t"}, 0)
