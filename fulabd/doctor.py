"""
`fulab doctor URL`: walk the chain from this machine to the daemon one link
at a time (name, TCP, TLS, WebSocket upgrade, ping, the other upload paths,
listings, status), print a checklist, and stop at the first link that is
broken, saying in plain words what is wrong and what to do about it.

Plain blocking sockets on purpose: a one-shot command that must show exactly
which step failed has no use for a reactor.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import os
import select
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import orjson

UPLOAD_PATHS = ("/fulab/lab/upload/ws", "/upload/ws")
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXPIRY_WARNING_DAYS = 14

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


def refusal_detail(body: bytes) -> str:
    """What a 403 body says was refused (`this token may not …`), or a guess when it says nothing."""
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        detail = None
    return detail or "the daemon refused this token: ask its operator for one with the read scope"


VERIFY_ADVICE = {
    9: "the certificate is not valid yet: check the server's clock (timedatectl)",
    18: "the certificate is self-signed: pass --cafile with it (or its CA) if you trust it",
    19: "the chain ends in a root this machine does not trust: pass --cafile with that root if it is yours",
    20: "the chain is incomplete or its issuer is not trusted: serve fullchain.pem (not cert.pem) with "
        "--tls-cert or nginx's ssl_certificate; for a private CA pass --cafile",
    21: "the chain is incomplete: serve fullchain.pem (not cert.pem) with --tls-cert or nginx's ssl_certificate",
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


class Doctor:
    def __init__(self, url: str, cafile: str | None = None, token: str | None = None, timeout: float = 10.0,
                 out=print):
        self.url = url
        self.cafile = cafile
        self.token = token
        self.timeout = timeout
        self.out = out
        self.addresses: list = []

    def ok(self, step: str, detail: str):
        self.out(f"[ok] {step}: {detail}")

    def warn(self, step: str, detail: str):
        self.out(f"[warn] {step}: {detail}")

    def run(self) -> int:
        self.out(f"fulab doctor {self.url}")
        try:
            target = parse_target(self.url)
            self.resolve(target)
            self.tcp(target)
            if target.secure:
                self.tls(target)
            self.upload_path(target, target.path + (f"?{target.query}" if target.query else ""), hard=True)
            for alias in UPLOAD_PATHS:
                if alias != target.path:
                    self.upload_path(target, alias, hard=False)
            for check in (self.listings, self.status):
                try:
                    check(target)
                except OutOfScope as e:
                    self.warn(e.step, f"not checked: {e.detail} (right for a laptop's upload-only token)")
        except Failure as e:
            self.out(f"[FAIL] {e.step}: {e.detail}")
            return 1
        self.out("all checks passed")
        return 0

    def resolve(self, target: Target):
        step = "name resolution"
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise Failure(step, f"cannot resolve {target.host} ({e.strerror}): check the spelling of the host, "
                          f"or this machine's DNS (getent hosts {target.host})")
        self.addresses = list(dict.fromkeys(info[4][0] for info in infos))
        self.ok(step, f"{target.host} is {', '.join(self.addresses)}")

    def connect(self, target: Target) -> socket.socket:
        return socket.create_connection((target.host, target.port), timeout=self.timeout)

    def tcp(self, target: Target):
        step = "TCP connect"
        started = time.monotonic()
        try:
            self.connect(target).close()
        except ConnectionRefusedError:
            raise Failure(step, f"{target.netloc} refused the connection: nothing listens there. "
                          f"Start the daemon (systemctl start fulabd) or nginx (systemctl start nginx), and on the "
                          f"server check: ss -ltnp | grep {target.port}")
        except (TimeoutError, socket.timeout):
            raise Failure(step, f"no answer from {target.netloc} within {self.timeout:g} s: a "
                          f"firewall drops the packets; open the port (ufw allow {target.port}/tcp, or the "
                          f"provider's firewall)")
        except OSError as e:
            raise Failure(step, f"cannot reach {target.netloc}: {e.strerror or e}")
        self.ok(step, f"{target.netloc} accepts connections ({(time.monotonic() - started) * 1000:.1f} ms)")

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)

    def wrap(self, target: Target, sock: socket.socket) -> socket.socket:
        return self.tls_context().wrap_socket(sock, server_hostname=target.host)

    def served_chain(self, target: Target) -> list:
        """The certificates the server sends, unverified, so that a failure can be described."""
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        sock = self.connect(target)
        connection = SSL.Connection(context, sock)
        if not is_ip(target.host):
            connection.set_tlsext_host_name(target.host.encode("idna"))
        connection.set_connect_state()
        try:
            while True:
                try:
                    connection.do_handshake()
                    break
                except SSL.WantReadError:
                    if not select.select([sock], [], [], self.timeout)[0]:
                        raise TimeoutError("TLS handshake timed out")
            return connection.get_peer_cert_chain(as_cryptography=True) or []
        finally:
            sock.close()

    def tls(self, target: Target):
        step = "TLS handshake"
        try:
            chain = self.served_chain(target)
        except Exception as e:
            raise Failure(step, f"no TLS on {target.netloc} ({e or type(e).__name__}): the port does "
                          f"not speak TLS; use ws:// for a plain port, or the TLS port (--tls-port, nginx's "
                          f"listen ... ssl)")
        leaf = chain[0] if chain else None
        names = certificate_names(leaf) if leaf is not None else []
        try:
            with self.wrap(target, self.connect(target)) as sock:
                version = sock.version()
        except ssl.SSLCertVerificationError as e:
            raise Failure(step, self.verify_failure(target, e, leaf, names, len(chain)))
        except (ssl.SSLError, OSError) as e:
            raise Failure(step, f"the TLS handshake failed: {e}")
        days = days_left(leaf)
        detail = (f"certificate for {', '.join(names)} valid {days} more days "
                  f"(until {leaf.not_valid_after_utc:%Y-%m-%d}), chain of {len(chain)}, {version}")
        if days < EXPIRY_WARNING_DAYS:
            self.warn(step, detail + ": renew it soon (certbot renew)")
        else:
            self.ok(step, detail)

    def verify_failure(self, target: Target, error, leaf, names, chain_length: int) -> str:
        code = error.verify_code
        if code == 10 and leaf is not None:
            return (f"the certificate for {', '.join(names)} expired {-days_left(leaf)} days ago "
                    f"({leaf.not_valid_after_utc:%Y-%m-%d}): renew it (certbot renew), then reload the server "
                    f"that serves it (systemctl reload nginx; fulabd re-reads --tls-cert within a minute by "
                    f"itself, or at once on systemctl kill -s HUP fulabd)")
        if code == 62:
            return (f"the certificate is for {', '.join(names) or 'another name'}, not {target.host}: use a URL "
                    f"with one of those names, or get a certificate for {target.host}")
        advice = VERIFY_ADVICE.get(code, "the certificate cannot be trusted")
        return f"{error.verify_message} (served chain of {chain_length}): {advice}"

    def open(self, target: Target, path: str):
        """TCP (+ TLS) and the HTTP upgrade: the Wire after a 101, else `UpgradeRefused` saying what came back."""
        sock = self.connect(target)
        if target.secure:
            sock = self.wrap(target, sock)
        key = base64.b64encode(os.urandom(16))
        request = [f"GET {path} HTTP/1.1", f"Host: {target.netloc}", "Upgrade: websocket",
                   "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13",
                   "User-Agent: fulab-doctor"]
        if self.token:
            request.append(f"Authorization: Bearer {self.token}")
        sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
        wire = Wire(sock)
        head = wire.read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in header_lines)}
        try:
            code = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise UpgradeRefused(0, f"not an HTTP answer: {status_line[:80]!r}")
        if code != 101:
            length = int(headers.get("content-length", "0") or 0)
            body = wire.buffer[:length] if length else wire.buffer
            sock.close()
            raise UpgradeRefused(code, status_line, headers, body.decode("utf-8", "replace"))
        expected = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            sock.close()
            raise UpgradeRefused(101, "101 with a wrong Sec-WebSocket-Accept: something in between rewrites the "
                                      "handshake")
        return wire

    def ping(self, wire: Wire) -> tuple[float, dict]:
        started = time.monotonic()
        wire.send_frame(0x1, b'{"type":"ping"}')
        while True:
            opcode, payload = wire.read_frame()
            if opcode == 0x1:
                return (time.monotonic() - started) * 1000, orjson.loads(payload)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionError(f"the server closed the WebSocket (code {code}: "
                                      f"{payload[2:].decode('utf-8', 'replace')})")
            if opcode == 0x9:
                wire.send_frame(0xA, payload)

    def upload_path(self, target: Target, path: str, hard: bool):
        step = f"upload path {path}" if not hard else "HTTP upgrade"
        try:
            wire = self.open(target, path)
        except UpgradeRefused as e:
            return self.broken(step, hard, e.explain(path))
        except (TimeoutError, socket.timeout):
            return self.broken(step, hard, f"connected, but no answer to the WebSocket upgrade within "
                                           f"{self.timeout:g} s: the daemon is stuck or overloaded, or this port "
                                           f"speaks TLS (use wss://)")
        except (ConnectionError, OSError) as e:
            return self.broken(step, hard, f"{e}: if this port speaks TLS, use wss://")
        try:
            if hard:
                self.ok(step, f"101 Switching Protocols at {path}")
                step = "ping/pong"
            try:
                rtt, reply = self.ping(wire)
            except (TimeoutError, socket.timeout):
                return self.broken(step, hard, f"no pong within {self.timeout:g} s: the daemon is stuck")
            except (ConnectionError, OSError, ValueError) as e:
                return self.broken(step, hard, str(e))
            if reply.get("type") != "pong":
                if reply.get("err") == "unauthorized":
                    return self.broken(step, hard, "the daemon refused this token: pass the right one with --token "
                                                   "(the laptop's FULAB_TOKEN)" if self.token else
                                                   "the daemon wants an access token: pass it with --token TOKEN "
                                                   "(the laptop's FULAB_TOKEN)")
                if reply.get("err") == "forbidden":
                    return self.broken(step, hard, f"the daemon accepted the token but refused it here: "
                                                   f"{reply.get('detail')}")
                if reply.get("err") == "invalid-path":
                    return self.broken(step, hard, f"the daemon has no WebSocket endpoint at {path}: uploads go "
                                                   f"to /fulab/lab/upload/ws")
                return self.broken(step, hard, f"the server answered the ping with {reply}")
            if hard:
                self.ok("ping/pong", f"round trip {rtt:.1f} ms")
            else:
                self.ok(step, f"accepts uploads (pong in {rtt:.1f} ms)")
            try:
                wire.send_frame(0x8, struct.pack("!H", 1000))
            except OSError:
                pass
        finally:
            wire.sock.close()

    def broken(self, step: str, hard: bool, detail: str):
        if hard:
            raise Failure(step, detail)
        self.warn(step, detail)

    def get(self, target: Target, path: str, step: str):
        connection = (http.client.HTTPSConnection(target.host, target.port, timeout=self.timeout,
                                                  context=self.tls_context())
                      if target.secure else http.client.HTTPConnection(target.host, target.port,
                                                                       timeout=self.timeout))
        headers = {"User-Agent": "fulab-doctor", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise Failure(step, f"GET {path} failed: {e}")
        finally:
            connection.close()
        if response.status == 403:
            raise OutOfScope(step, f"GET {path} was refused: {refusal_detail(body)}")
        if response.status != 200:
            advice = UpgradeRefused(response.status, f"{response.status} {response.reason}",
                                    {"location": response.getheader("location", "")}).explain(path)
            raise Failure(step, f"GET {path}: {advice}")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise Failure(step, f"GET {path} answered 200 but not JSON: another web application answers this "
                          f"path; point the proxy's location {target.lab_base}/ at the daemon")

    def listings(self, target: Target):
        step = "listings"
        data = self.get(target, target.lab_base + "/sessions", step)
        sessions = data.get("sessions", [])
        active = sum(1 for session in sessions if session.get("active"))
        self.ok(step, f"{target.lab_base}/sessions lists {len(sessions)} sessions ({active} active)")

    def status(self, target: Target):
        step = "status"
        data = self.get(target, target.lab_base + "/status", step)
        listeners = ", ".join(f"{listener['endpoint']}{'' if listener['listening'] else ' (NOT listening)'}"
                              for listener in data.get("listeners", []))
        self.ok(step, f"fulabd {data.get('version')} up {data.get('uptime', 0):.0f} s, "
                      f"{data.get('uploads', 0)} uploads connected, listening on {listeners}")


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


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def certificate_names(certificate) -> list[str]:
    from cryptography import x509

    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(name.value) for name in alternatives]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [attribute.value for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


def days_left(certificate) -> int:
    return (certificate.not_valid_after_utc - datetime.now(timezone.utc)).days


def run(url: str, cafile: str | None = None, token: str | None = None, timeout: float = 10.0, out=print) -> int:
    return Doctor(url, cafile, token, timeout, out).run()
