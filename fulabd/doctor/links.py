"""
What the doctor's checks stand on: the URL it was given, and a blocking
WebSocket client's side of the wire (its frames, and what a refused upgrade
means for the user).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

UPLOAD_PATHS = ("/fulab/lab/upload/ws", "/upload/ws")
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

HTTP_ADVICE = {
    301: "the server redirects to {location}: use that URL",
    302: "the server redirects to {location}: use that URL",
    308: "the server redirects to {location}: use that URL",
    400: "the server read a plain HTTP request, not a WebSocket upgrade: a proxy in between drops the Upgrade "
         "and Connection headers. nginx needs, in the location block: proxy_http_version 1.1; "
         "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; "
         "(as in etc/nginx/fulab.conf)",
    401: "the server wants a token: pass --token TOKEN",
    403: "the server refuses this client: the token lacks a scope (upload, read), or this address or Origin "
         "is not allowed",
    404: "nothing is served at {path} on this host: the path is wrong, or the proxy has no location for it. "
         "Uploads go to /fulab/lab/upload/ws; nginx must proxy location /fulab/lab/ (and /upload/ws and / for "
         "the old paths: README, Deploying)",
    426: "the daemon got the request without its Upgrade header: a proxy in between drops it. nginx needs, in "
         "the location block: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
         "proxy_set_header Connection \"upgrade\"; (as in etc/nginx/fulab.conf)",
    500: "the server failed on this request: read its log (journalctl -u fulabd, or the nginx error log)",
    502: "the proxy (nginx) is up but the daemon behind it is not answering: start it (systemctl start fulabd) and "
         "check that it listens where proxy_pass points (on the server: ss -ltnp | grep 5056)",
    503: "the proxy has no backend available: start the daemon (systemctl start fulabd) and check the proxy's "
         "upstream",
    504: "the proxy reached the daemon but it did not answer in time: the daemon is stuck or overloaded; on the "
         "server read journalctl -u fulabd and run fulab status",
}


class Failure(Exception):
    """A broken link: the checklist stops here."""

    def __init__(self, step: str, detail: str):
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


class OutOfScope(Failure):
    """The token may not do this (a laptop's upload-only token may not read): not a broken link."""


@dataclass
class Target:
    scheme: str
    host: str
    port: int
    path: str
    query: str

    @property
    def secure(self) -> bool:
        return self.scheme == "wss"

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def lab_base(self) -> str:
        """Where the listings live, next to the upload path: `/fulab/lab` for `/fulab/lab/upload/ws`."""
        if self.path.endswith("/lab/upload/ws"):
            return self.path[: -len("/upload/ws")]
        return "/fulab/lab"


def parse_target(url: str) -> Target:
    parts = urlsplit(url if "://" in url else "wss://" + url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    try:
        port = parts.port
    except ValueError:
        raise Failure("URL", f"{url} has no valid port number (1-65535)") from None
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise Failure("URL", f"{url} is not a ws:// or wss:// URL, "
                             f"e.g. wss://lab.example.org:5057/fulab/lab/upload/ws")
    path = parts.path if parts.path not in ("", "/") or parts.query else UPLOAD_PATHS[0]
    return Target(scheme, parts.hostname, port or (443 if scheme == "wss" else 80), path, parts.query)


class Wire:
    """A connected (maybe TLS) socket with a read buffer."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def read_until(self, marker: bytes, limit: int = 65536) -> bytes:
        while marker not in self.buffer:
            if len(self.buffer) > limit:
                raise ConnectionError("no end of HTTP header in the first 64 KiB")
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send_frame(self, opcode: int, payload: bytes):
        """One masked client frame."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self.read_exact(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self.read_exact(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self.read_exact(8))[0]
        mask = self.read_exact(4) if second & 0x80 else None
        payload = self.read_exact(size)
        if mask:
            payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        return first & 0x0F, payload


class UpgradeRefused(Exception):
    def __init__(self, code: int, status_line: str, headers: dict | None = None, body: str = ""):
        super().__init__(status_line)
        self.code = code
        self.status_line = status_line
        self.headers = headers or {}
        self.body = body

    def explain(self, path: str) -> str:
        if self.code == 400 and "plain HTTP request was sent to HTTPS port" in self.body:
            return f"{self.status_line}: this port speaks TLS: use wss://"
        advice = HTTP_ADVICE.get(self.code)
        if advice is None:
            return f"{self.status_line}: expected 101 Switching Protocols"
        return f"{self.status_line} — " + advice.format(path=path, location=self.headers.get("location", "?"))
