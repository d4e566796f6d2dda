"""
Other labs (`--remote-source NAME=URL`, or `LAB_REMOTE_SOURCES`): their active
sessions merged into this lab's listings, as the futon3 lab did, but asked
concurrently, each within a timeout, and without loops.

Every lab is asked `GET URL/fulab/lab/sessions/active` with the `X-Fulab-Hop`
header; a lab answers a request that carries it with its own sessions only, so
two labs naming each other (or any cycle) never ask each other back.  An
answer, good or failed, is reused for `CACHE_SECONDS`, and viewers asking
meanwhile wait for the request already in flight, so polling viewers do not
multiply requests; a lab that is down or slow costs at most its timeout and is
reported in the listing's `remote-errors`.  A remote's answer is hostile: at
most `MAX_ANSWER_BYTES` is read, only entries that are objects with a string
`id` are kept, and their well-known fields only when of the expected type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import orjson
from twisted.internet import defer, protocol, threads
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

HOP_HEADER = b"X-Fulab-Hop"            # marks a request from another lab: answered with local sessions only
LISTING_PATH = "/fulab/lab/sessions/active"
MAX_ANSWER_BYTES = 8 * 1024 * 1024     # a larger answer is dropped (`too-large`)
DEFAULT_TIMEOUT = 3.0                  # seconds for a lab's whole answer, connecting included
CACHE_SECONDS = 5.0                    # an answer is reused this long (default of --remote-cache)
TOKEN_FILE_BYTES = 64 * 1024
ENVIRONMENT = "LAB_REMOTE_SOURCES"


class BadRemote(ValueError):
    """A remote source that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class RemoteLab:
    name: str
    url: str                 # the lab's base URL, without a trailing slash
    token: str | None = field(default=None, repr=False)

    def viewer_url(self, ident: str) -> str:
        """The remote lab's own web UI page of a session."""
        return f"{self.url}/fulab/lab/?session={quote(ident, safe='')}"


def parse_source(value: str, where: str = "--remote-source") -> tuple[str, str]:
    """`NAME=URL` → (name, base URL); `URL` is `http://` or `https://` with a host."""
    name, equals, url = value.partition("=")
    name, url = name.strip(), url.strip()
    if not equals or not name or not url:
        raise BadRemote(f"{where} {value!r} is not NAME=URL, e.g. lab2=http://lab2.example.org:5056")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise BadRemote(f"{where} {value!r}: the URL must be http:// or https:// with a host and no query, "
                        "e.g. lab2=https://lab2.example.org")
    return name, url.rstrip("/")


def parse_environment(text: str) -> list[tuple[str, str]]:
    """`name1=url1,name2=url2` as the old lab read it (blank entries skipped)."""
    return [parse_source(item, ENVIRONMENT) for item in text.split(",") if item.strip()]


def read_token(path: str) -> str:
    """The first token of a token file (`TOKEN [NAME]` lines, `#` comments), as `--token-file` files are."""
    try:
        with open(path, "rb") as f:
            text = f.read(TOKEN_FILE_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadRemote(f"cannot read the remote token file {path}: {e}") from None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            return fields[0]
    raise BadRemote(f"the remote token file {path} holds no token; put the remote lab's token on its first line")


def configured_labs(sources: list[str], token_files: list[str], environment: str | None) -> list[RemoteLab]:
    """The labs from the options (`NAME=URL`, `NAME=FILE`), else from `LAB_REMOTE_SOURCES`."""
    pairs = [parse_source(value) for value in sources] if sources else parse_environment(environment or "")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise BadRemote(f"remote source names must differ: {', '.join(names)}")
    tokens = {}
    for value in token_files:
        name, equals, path = value.partition("=")
        if not equals or name.strip() not in names:
            raise BadRemote(f"--remote-token-file {value!r} must be NAME=FILE with NAME a remote source "
                            f"({', '.join(names) or 'none is given'})")
        tokens[name.strip()] = read_token(path.strip())
    return [RemoteLab(name, url, tokens.get(name)) for name, url in pairs]


# -- asking one lab -------------------------------------------------------------

class TooLarge(Exception):
    """The answer is over the size limit."""


class _BoundedBody(protocol.Protocol):
    """Collect a response body up to `limit` bytes; stop the transfer past it (or at once, if declared longer)."""

    def __init__(self, limit: int, declared: int | None):
        self.limit = limit
        self.declared = declared
        self.finished = defer.Deferred(lambda _: self.transport.stopProducing())
        self.chunks: list[bytes] = []
        self.size = 0

    def connectionMade(self):
        if self.declared is not None and self.declared > self.limit:
            self._refuse(f"the answer is {self.declared} bytes, over {self.limit}")

    def dataReceived(self, data: bytes):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._refuse(f"the answer is over {self.limit} bytes")
            return
        self.chunks.append(data)

    def _refuse(self, reason: str):
        self.finished.errback(TooLarge(reason))
        self.transport.stopProducing()

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(reason)


class HttpFetcher:
    """GET requests through `twisted.web.client.Agent` (https verified against the system's CAs)."""

    def __init__(self, reactor, max_bytes: int = MAX_ANSWER_BYTES):
        self.agent = Agent(reactor)
        self.max_bytes = max_bytes

    def get(self, url: str, headers: dict[bytes, bytes]) -> defer.Deferred:
        """(status, body); cancelling it aborts the connection."""
        d = self.agent.request(b"GET", url.encode("ascii"), Headers({name: [value] for name, value in headers.items()}))
        return d.addCallback(self._read)

    def _read(self, response):
        body = _BoundedBody(self.max_bytes, None if response.length is UNKNOWN_LENGTH else response.length)
        response.deliverBody(body)
        return body.finished.addCallback(lambda data: (response.code, data))


# -- the labs together ---------------------------------------------------------------

@dataclass
class Answer:
    """What one lab gave: its entries, and the problems to report (a refusal, a timeout, dropped entries)."""

    entries: list[dict]
    errors: list[dict]


# Fields the listings' readers (the web UI among them) take to be of these types: a remote entry's field of
# another type is left out of it.
TYPED_FIELDS = {**dict.fromkeys(("session-id", "project", "path", "modified", "source", "originator", "cwd",
                                 "created-at", "uploader"), str),
                **dict.fromkeys(("size-kb", "events", "pars"), int), "active": bool, "uploading": bool}


def cleaned(entry: dict, lab: RemoteLab) -> dict:
    """A remote entry with its well-known fields of the right type only, marked as the lab's."""
    kept = {key: value for key, value in entry.items()
            if key not in TYPED_FIELDS or (isinstance(value, TYPED_FIELDS[key])
                                           and (TYPED_FIELDS[key] is bool or not isinstance(value, bool)))}
    return kept | {"remote-source": lab.name, "remote-url": lab.url, "viewer-url": lab.viewer_url(entry["id"])}


def problem(lab: RemoteLab, error: str, detail: str, **extra) -> dict:
    return {"source": lab.name, "url": lab.url, "error": error, "detail": detail, **extra}


def answer_of(lab: RemoteLab, status: int, body: bytes) -> Answer:
    """The lab's entries from its HTTP answer, each marked with `remote-source`, `remote-url`, `viewer-url`."""
    if status in (401, 403):
        fix = ("its token was refused: check the file of --remote-token-file" if lab.token
               else f"it wants a token: give one with --remote-token-file {lab.name}=FILE")
        return Answer([], [problem(lab, "unauthorized", f"the lab answered HTTP {status}; {fix}", status=status)])
    if status != 200:
        return Answer([], [problem(lab, "http-status", f"the lab answered HTTP {status}", status=status)])
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return Answer([], [problem(lab, "bad-answer", f"the answer is not JSON ({e})")])
    if not isinstance(data, dict) or data.get("ok") is not True or not isinstance(data.get("sessions"), list):
        return Answer([], [problem(lab, "bad-answer", 'the answer is not {"ok":true,"sessions":[…]}')])
    kept = [entry for entry in data["sessions"] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
    entries = [cleaned(entry, lab) for entry in kept]
    dropped = len(data["sessions"]) - len(kept)
    errors = [problem(lab, "bad-entries", f"{dropped} entries that are not objects with a string id were left out")
              ] if dropped else []
    return Answer(entries, errors)


def failure_of(lab: RemoteLab, failure, timeout: float, timed_out: bool) -> Answer:
    if timed_out:
        return Answer([], [problem(lab, "timeout", f"no complete answer within {timeout:g} s")])
    if failure.check(TooLarge):
        return Answer([], [problem(lab, "too-large", str(failure.value))])
    if failure.check(ConnectError, DNSLookupError):
        return Answer([], [problem(lab, "unreachable", f"cannot connect: {failure.getErrorMessage()}")])
    return Answer([], [problem(lab, "unreachable", f"the request failed: {failure.getErrorMessage()}")])


class RemoteLabs:
    """The labs' active sessions, each lab asked at most once per `cache_seconds` and within `timeout`."""

    _log = Logger()

    def __init__(self, labs: list[RemoteLab], get, clock, timeout: float = DEFAULT_TIMEOUT,
                 cache_seconds: float = CACHE_SECONDS, run_in_thread=None):
        """`get(url, headers)` fires with (status, body) and aborts when cancelled (`HttpFetcher.get`);
        answers are parsed with `run_in_thread` (a hostile 8 MiB of JSON takes a while)."""
        self.labs = labs
        self.get = get
        self.clock = clock
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._run_in_thread = run_in_thread or threads.deferToThread
        self._answers: dict[str, tuple[float, Answer]] = {}
        self._waiting: dict[str, list[defer.Deferred]] = {}
        self._failing: dict[str, str] = {}  # lab name -> error code, to log changes only

    def merge(self, request, body: dict) -> defer.Deferred:
        """The `Sessions` hook: `body` with the labs' entries after the local ones, unless another lab asks."""
        if request.getHeader(HOP_HEADER) is not None:
            return defer.succeed(body)
        return self.listing().addCallback(lambda answer: body | {
            "sessions": body["sessions"] + answer.entries, "remote-sources": [lab.name for lab in self.labs],
            "remote-errors": answer.errors})

    def listing(self) -> defer.Deferred:
        """An `Answer` of every lab, in the order the labs were given."""
        d = defer.gatherResults([self._answer(lab) for lab in self.labs])
        return d.addCallback(lambda answers: Answer([entry for answer in answers for entry in answer.entries],
                                                    [error for answer in answers for error in answer.errors]))

    def _answer(self, lab: RemoteLab) -> defer.Deferred:
        cached = self._answers.get(lab.name)
        if cached is not None and self.clock.seconds() - cached[0] < self.cache_seconds:
            return defer.succeed(cached[1])
        waiter = defer.Deferred()
        asking = lab.name in self._waiting
        self._waiting.setdefault(lab.name, []).append(waiter)
        if not asking:
            self._ask(lab)
        return waiter

    def _ask(self, lab: RemoteLab) -> None:
        headers = {HOP_HEADER: b"1", b"Accept": b"application/json"}
        if lab.token:
            headers[b"Authorization"] = b"Bearer " + lab.token.encode("utf-8")
        d = defer.maybeDeferred(self.get, lab.url + LISTING_PATH, headers)
        expired = []

        def expire():
            expired.append(True)
            d.cancel()

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        timer = self.clock.callLater(self.timeout, expire)
        d.addBoth(stop_timer)
        d.addCallback(lambda result: self._run_in_thread(answer_of, lab, *result))
        d.addErrback(lambda failure: failure_of(lab, failure, self.timeout, timed_out=bool(expired)))
        d.addCallback(self._answered, lab)

    def _answered(self, answer: Answer, lab: RemoteLab) -> None:
        self._answers[lab.name] = (self.clock.seconds(), answer)
        self._log_change(lab, answer)
        for waiter in self._waiting.pop(lab.name):
            waiter.callback(answer)

    def _log_change(self, lab: RemoteLab, answer: Answer) -> None:
        """Log when a lab starts failing, fails differently or recovers; quiet while nothing changes."""
        failed = next((error for error in answer.errors if error["error"] != "bad-entries"), None)
        before = self._failing.get(lab.name)
        if failed is not None and failed["error"] != before:
            self._log.warn("remote lab {name} ({url}) left out of the listings: {detail}", name=lab.name, url=lab.url,
                           detail=failed["detail"], error=failed["error"])
            self._failing[lab.name] = failed["error"]
        elif failed is None and before is not None:
            self._log.info("remote lab {name} ({url}) answers again", name=lab.name, url=lab.url)
            del self._failing[lab.name]
