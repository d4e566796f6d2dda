"""
The doctor's checklist: one method per link, each saying what it found, or
raising `Failure` with what is wrong and what to do about it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import select
import socket
import ssl
import struct
import time

import orjson

from fulabd.doctor.certificates import EXPIRY_WARNING_DAYS, VERIFY_ADVICE, certificate_names, days_left, is_ip
from fulabd.doctor.links import (UPLOAD_PATHS, WEBSOCKET_GUID, Failure, OutOfScope, Target, UpgradeRefused, Wire,
                                 parse_target)


def refusal_detail(body: bytes) -> str:
    """What a 403 body says was refused (`this token may not …`), or a guess when it says nothing."""
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        detail = None
    return detail or "the daemon refused this token: ask its operator for one with the read scope"


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
