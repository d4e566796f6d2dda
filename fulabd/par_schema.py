"""
What a PAR (post-action review) may hold, checked the same way whatever route
it came by (the upload `par` message, `fulab-upload par`, the HTTP POST):
the store checks every PAR before it is stored.

Known fields are typed; other keys (e.g. a joint PAR's `sessions`) are kept
as they are, within the size cap.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson

from fulabd.messages import BAD_PAR, MAX_DEPTH, ProtocolError, deeper_than

QUESTIONS = ("intention", "happening", "perspectives", "learned", "forward")
MAX_PAR_BYTES = 64 * 1024
MAX_PARS_PER_SESSION = 1000
MAX_TITLE = 500
MAX_TAGS = 50
MAX_ID = 200
OLD_LAB_TITLE = "Session Review"  # the old lab's title for a PAR without one


def bad(field: str, detail: str) -> ProtocolError:
    return ProtocolError(BAD_PAR, detail, field=field)


def checked_par(data, author: str | None = None) -> dict:
    """The PAR to store, normalized; raises `bad-par` naming the first field that is wrong.

    `author` (the token name of the request or connection) is recorded as
    `author`; without one, the PAR's own `author` string is kept. A PAR
    without `id` gets one derived from its content, so the same PAR sent
    twice is stored once.
    """
    if not isinstance(data, dict):
        raise bad("par", "a PAR must be a JSON object (or EDN map) with a \"title\"")
    par = {key: value for key, value in data.items() if key not in ("id", "par-id")}
    title = data.get("title")
    if title is None and any(isinstance(data.get(key), str) and data[key].strip() for key in ("text", "summary")):
        title = OLD_LAB_TITLE  # an old lab's PAR, `text` and `par-id` with no title, as its viewer titled it
    if not isinstance(title, str) or not title.strip():
        raise bad("title", "a PAR needs a non-empty \"title\" string")
    if len(title) > MAX_TITLE:
        raise bad("title", f"the title is {len(title)} characters; at most {MAX_TITLE} are accepted")
    par["title"] = title.strip()
    if data.get("tags") is not None:
        par["tags"] = tags_of(data["tags"])
    if data.get("questions") is not None:
        par["questions"] = questions_of(data["questions"])
    if "timestamp" in data:
        par["timestamp"] = timestamp_of(data["timestamp"])
    if "lines" in data:
        par["lines"] = lines_of(data["lines"])
    if author is not None:
        par["author"] = author
    elif "author" in data and not (isinstance(data["author"], str) and 0 < len(data["author"]) <= MAX_ID):
        raise bad("author", f"\"author\", when given, must be a string of 1 to {MAX_ID} characters")
    check_size(par)  # first, so that the walk below is over at most MAX_PAR_BYTES of values
    if deeper_than(par, MAX_DEPTH):
        raise bad("par", f"the PAR nests values more than {MAX_DEPTH} levels deep; flatten it")
    par["id"] = id_of(data.get("id", data.get("par-id")), par)
    check_size(par)  # again with the id, which counts too
    return par


def check_size(par: dict) -> None:
    try:
        size = len(orjson.dumps(par, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError as e:  # nested deeper than orjson writes
        raise bad("par", f"the PAR cannot be stored ({e}); flatten it") from None
    if size > MAX_PAR_BYTES:
        raise bad("par", f"the PAR is {size} bytes as JSON; at most {MAX_PAR_BYTES} are accepted: shorten it")


def id_of(given, par: dict) -> str:
    if given is None:
        digest = hashlib.sha256(orjson.dumps(par, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
        return f"par-{digest.hexdigest()[:16]}"
    if not isinstance(given, str) or not given.strip() or len(given) > MAX_ID:
        raise bad("id", f"\"id\", when given, must be a non-empty string of at most {MAX_ID} characters")
    return given.strip()


def tags_of(tags) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = tags.replace(",", " ").split()
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise bad("tags", "\"tags\" must be a list of strings or one comma-separated string")
    cleaned = []
    for tag in tags:
        tag = tag.strip().lstrip(":")
        if any(c.isspace() for c in tag):
            raise bad("tags", f"tag {tag!r} contains a space; separate tags with commas")
        if tag and tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise bad("tags", f"{len(cleaned)} tags given; at most {MAX_TAGS} are accepted")
    return cleaned


def questions_of(questions) -> dict:
    if questions is None:
        return {}
    if not isinstance(questions, dict):
        raise bad("questions", f"\"questions\" must be an object with the keys {', '.join(QUESTIONS)}")
    unknown = sorted(str(key) for key in set(questions) - set(QUESTIONS))
    if unknown:
        raise bad("questions", f"unknown question(s) {', '.join(unknown)}; the questions are {', '.join(QUESTIONS)}")
    answers = {}
    for key in QUESTIONS:
        value = questions.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise bad("questions", f"the answer to {key!r} must be a string")
        if value.strip():
            answers[key] = value.strip()
    return answers


def timestamp_of(value) -> str:
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    raise bad("timestamp", "\"timestamp\" must be an ISO-8601 date and time string, e.g. \"2026-06-05T14:03:00Z\"")


def lines_of(value) -> list[int]:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)
            and value[0] <= value[1]):
        return list(value)
    raise bad("lines", "\"lines\" must be [first, last]: two line numbers (0-based, first <= last)")


def sidecar_pars(value) -> list[dict]:
    """The PARs of a `.par.edn` sidecar's decoded value: its maps (one map alone is a list of one)."""
    pars = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
    return [par for par in pars if isinstance(par, dict)]
