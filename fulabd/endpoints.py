"""
What a request is for, from its request line and headers alone: the one
classification the gate (which scope, how big a body) and the WebSocket
dispatch (which endpoint) both use, so they cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from fulabd.tokens import ADMIN, READ, REVIEW, UPLOAD

UPLOAD_PATHS = ("/fulab/lab/upload/ws", "/upload/ws")
STREAM_PATH = "/fulab/lab/stream/ws"
HEALTH_PATH = "/healthz"
# Old viewers (the Emacs client, the Clojure lab's page) open `/?path=P`; behind the
# shipped nginx, whose location is /fulab/lab/, that is `/fulab/lab/?path=P`.
OLD_VIEWER_PATHS = ("/", "/fulab/lab/")
PAR_POST = re.compile(r"/fulab/lab/sessions/[^/]+/pars(/.*)?")   # the resource is a leaf: so is what is under it
METRICS_PATH = "/metrics"
PAR_BODY_LIMIT = 1024 * 1024
READ_METHODS = (b"GET", b"HEAD")


@dataclass(frozen=True)
class Endpoint:
    """What a request asks for: `scope` needed (None: any accepted token), body bytes accepted."""

    name: str
    scope: str | None
    max_body: int = 0
    websocket: bool = False


HEALTH = Endpoint("health", None)
UI_FILE = Endpoint("ui-file", None)
UPLOAD_SOCKET = Endpoint("upload", UPLOAD, websocket=True)
STREAM_SOCKET = Endpoint("stream", READ, websocket=True)
UNKNOWN_SOCKET = Endpoint("unknown-websocket", None, websocket=True)
PAR_WRITE = Endpoint("par-post", REVIEW, max_body=PAR_BODY_LIMIT)
METRICS = Endpoint("metrics", ADMIN)
READING = Endpoint("read", READ)


def is_decimal(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²" (which `int` refuses) and "２" (which it reads as 2)."""
    return text.isascii() and text.isdigit()


def request_path(uri: bytes) -> str:
    """The path as twisted.web routes it (`Request.process`): what comes before the first `?`, less its first
    byte whatever it is, cut at each `/` and each piece %-decoded; a `/` decoded inside a piece is spelled
    `%2F`, so that the pieces here are Twisted's (`/metrics/%2F` reaches the metrics leaf; `Xmetrics` does too,
    and a fragment is no fragment)."""
    raw = uri.split(b"?", 1)[0].decode("utf-8", "surrogateescape")
    return "/" + "/".join(unquote(segment, errors="surrogateescape").replace("/", "%2F")
                          for segment in raw[1:].split("/"))


def request_query(uri: bytes) -> dict[str, list[str]]:
    """The query as twisted.web reads it (`Request.args`): what follows the first `?`, blanks kept."""
    _, _, query = uri.partition(b"?")
    return parse_qs(query.decode("utf-8", "surrogateescape"), keep_blank_values=True)


def is_upload_path(path: str) -> bool:
    """The upload paths, also under any prefix a proxy mounts the lab at."""
    return path in UPLOAD_PATHS or path.endswith("/lab/upload/ws")


def is_stream_request(path: str, params) -> bool:
    """A viewer's WebSocket: the stream path, or an old viewer's `/?path=`."""
    return path == STREAM_PATH or (path in OLD_VIEWER_PATHS and "path" in params)


def websocket_endpoint(path: str, params) -> Endpoint:
    if is_stream_request(path, params):
        return STREAM_SOCKET
    if is_upload_path(path):
        return UPLOAD_SOCKET
    return UNKNOWN_SOCKET


def classify(method: bytes, path: str, params, upgrade: bool, ui_files: frozenset[str]) -> Endpoint:
    """The endpoint of a request; `params` holds the query's names (str), `ui_files` the UI's public paths."""
    if upgrade:
        return websocket_endpoint(path, params)
    if method in READ_METHODS:
        if path == HEALTH_PATH:
            return HEALTH
        if path in ui_files:
            return UI_FILE
        if path == METRICS_PATH or path.startswith(METRICS_PATH + "/"):  # a leaf: it answers below itself too
            return METRICS
        return READING
    if method == b"POST" and PAR_POST.fullmatch(path):
        return PAR_WRITE
    return READING  # any other method: routing answers 405, after the gate
