"""
Real parts for tests: the daemon as its own process on a loopback port, and
the sample session files.  Every test that needs a daemon gets it from here.
"""

from __future__ import annotations

import base64
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "tests" / "data" / "samples"  # real sessions, kept in the repository (see its SOURCES.md)
LISTENING = re.compile(r"listening on (?P<description>\S+) \(.*\bport=(?P<port>\d+)")


def sample_files() -> list[Path]:
    """Every real and curated sample session file."""
    files = sorted(SAMPLES.rglob("*.jsonl"))
    assert files, f"no sample sessions under {SAMPLES}"
    return files


def sample_lines(path: Path) -> list[str]:
    """A file's lines as raw strings, without their newlines."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def kill_process(process: subprocess.Popen | None):
    """SIGKILL `process` (if it still runs) and reap it."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(30)


def stop_process(process: subprocess.Popen | None):
    """SIGTERM `process` and wait for it to end; SIGKILL it if it takes more than 30 s."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            kill_process(process)


STORE_LOADED = re.compile(r"store at .* holds \d+ sessions")


class Daemon:
    """`twistd -n fulab` in a subprocess, on a free loopback port, with its own store."""

    def __init__(self, root: Path, *args: str, port: str = "tcp:0:interface=127.0.0.1", env: dict | None = None,
                 twistd_args: tuple = (), cwd: Path | None = None, max_open_files: int | None = None):
        """`max_open_files`: the daemon process's RLIMIT_NOFILE (soft and hard)."""
        self.root = Path(root)
        self.cwd = Path(cwd) if cwd is not None else self.root.parent
        self.max_open_files = max_open_files
        self.args = list(args)
        self.env = env or {}
        self.twistd_args = list(twistd_args)
        self.port_description = port
        self.port: int | None = None
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []
        self._listening = threading.Event()
        self._lines = threading.Condition()
        self._ended: subprocess.Popen | None = None

    def start(self, timeout: float = 30, loaded: bool = True) -> "Daemon":
        """Start and wait until it listens and (with `loaded`) its store is loaded (it listens before that)."""
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **self.env)
        loads_before = sum(1 for line in self.log if STORE_LOADED.search(line))
        self._listening.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *self.command()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(self.cwd),
            preexec_fn=self._limit_files if self.max_open_files else None)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        with self._lines:
            self._lines.wait_for(lambda: self._listening.is_set() or self._ended is self.process, timeout)
        if not self._listening.is_set():
            self.stop()
            raise RuntimeError("daemon did not start listening:\n" + "\n".join(self.log[-40:]))
        if loaded:
            self.wait_for_log(STORE_LOADED.pattern, timeout, count=loads_before + 1)
        return self

    def command(self) -> list[str]:
        """twistd's arguments."""
        return ["-n", "--pidfile=", *self.twistd_args, "fulab", "--port", self.port_description,
                "--root", str(self.root), *self.args]

    def _limit_files(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

    def _read(self, process):
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lines:
                self.log.append(line)
                self._lines.notify_all()
            match = LISTENING.search(line)
            if match:
                self.ports[match["description"]] = int(match["port"])
            if match and not self._listening.is_set():
                self.port = int(match["port"])
                self._listening.set()
        with self._lines:
            self._ended = process
            self._lines.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 30, count: int = 1) -> str:
        """The `count`th log line (from now on or earlier) matching `pattern`."""
        regex = re.compile(pattern)

        def found():
            matching = [line for line in self.log if regex.search(line)]
            return matching[count - 1] if len(matching) >= count else None

        with self._lines:
            line = self._lines.wait_for(found, timeout)
        if not line:
            raise AssertionError(f"fewer than {count} log lines match {pattern!r}:\n" + "\n".join(self.log[-40:]))
        return line

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_port(self) -> int:
        """The `--tls-port` listener's port, once it listens."""
        self.wait_for_log(r"listening on tls:")
        return next(port for description, port in self.ports.items() if description.startswith("tls:"))

    def kill(self):
        """SIGKILL: the crash case."""
        kill_process(self.process)

    def stop(self):
        stop_process(self.process)

    def rss(self) -> int:
        """The daemon process's resident memory, in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024

    def restart(self, kill: bool = True) -> "Daemon":
        """Stop (SIGKILL by default) and start again on the same port."""
        self.kill() if kill else self.stop()
        self.port_description = f"tcp:{self.port}:interface=127.0.0.1"
        return self.start()


def get_json(url: str, headers: dict | None = None, context=None):
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        return orjson.loads(response.read())


class CertificateAuthority:
    """
    A root CA and an intermediate, as Let's Encrypt has: leaves are issued by
    the intermediate, so a client trusting only the root verifies a server
    only if the server sends the chain (`fullchain.pem`: leaf + intermediate).
    """

    def __init__(self, directory: Path):
        from cryptography.hazmat.primitives import serialization

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root_key, self.root = self._make("fulabd test root", None, None, ca=True)
        self.intermediate_key, self.intermediate = self._make("fulabd test intermediate", self.root_key,
                                                              self.root, ca=True)
        self.root_path = self.directory / "root.pem"
        self.root_path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _make(name, issuer_key, issuer, ca=False, names=(), days=30, start_days=-1):
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer.subject if issuer is not None else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=start_days))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            alternatives = []
            for each in names:
                try:
                    alternatives.append(x509.IPAddress(ipaddress.ip_address(each)))
                except ValueError:
                    alternatives.append(x509.DNSName(each))
            builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        return key, builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())

    def issue(self, name: str, names=("localhost", "127.0.0.1"), days: int = 30, start_days: int = -1):
        """`(fullchain.pem, privkey.pem)` paths of a new leaf for `names` under `<dir>/<name>/`."""
        from cryptography.hazmat.primitives import serialization

        key, leaf = self._make(names[0] if names else name, self.intermediate_key, self.intermediate,
                               names=names, days=days, start_days=start_days)
        folder = self.directory / name
        folder.mkdir(exist_ok=True)
        fullchain, privkey = folder / "fullchain.pem", folder / "privkey.pem"
        fullchain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                              + self.intermediate.public_bytes(serialization.Encoding.PEM))
        privkey.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        return fullchain, privkey

    def client_context(self):
        """
        An `ssl.SSLContext` trusting only the root: the chain must come from the server.

        It stops at TLS 1.2 because `websockets.sync` reads the socket in a thread while
        the caller writes to it, and with TLS 1.3 (whose session tickets arrive after the
        handshake) that loses the opening request now and then: measured against the
        daemon, 4 stalled handshakes in 600 connections with TLS 1.3, none in 600 with
        TLS 1.2; the same stall showed through nginx.  Related reports: python/cpython
        #137583 (websockets #1648), python-engineio #461.  `fulab doctor` (one thread)
        covers TLS 1.3.
        """
        import ssl

        context = ssl.create_default_context(cafile=str(self.root_path))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context


def free_port() -> int:
    """A loopback port free right now, for a foreign server that cannot report the port it bound."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nginx:
    """
    The real nginx running the shipped `etc/nginx/fulab.conf` (and, with
    `old_paths`, `fulab-old-paths.conf`), with only the port, certificate and
    backend address changed, in front of a daemon on `backend_port`.
    """

    def __init__(self, folder: Path, backend_port: int, cert: Path, key: Path, old_paths: bool = False,
                 dropping: tuple[str, ...] = ()):
        """`dropping`: leave out the config lines containing these words (to make a misconfiguration real)."""
        skip_without(nginx_missing())
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.backend_port = backend_port
        self.cert, self.key = cert, key
        self.old_paths = old_paths
        self.dropping = dropping
        self.process: subprocess.Popen | None = None

    def _shipped(self, name: str, replacements: dict[str, str]) -> str:
        text = (REPO / "etc" / "nginx" / name).read_text()
        for old, new in replacements.items():
            assert old in text, f"{name} no longer contains {old!r}: update the Nginx fixture"
            text = text.replace(old, new)
        return "".join(line for line in text.splitlines(keepends=True)
                       if not any(word in line for word in self.dropping))

    def write_config(self) -> Path:
        backend = {"http://127.0.0.1:5056;": f"http://127.0.0.1:{self.backend_port};"}
        server = self._shipped("fulab.conf", dict(backend, **{
            "listen 5057 ssl;": f"listen 127.0.0.1:{self.port} ssl;",
            "/etc/letsencrypt/live/lab.example.org/fullchain.pem": str(self.cert),
            "/etc/letsencrypt/live/lab.example.org/privkey.pem": str(self.key),
        }))
        if self.old_paths:
            old_paths = self.folder / "fulab-old-paths.conf"
            old_paths.write_text(self._shipped("fulab-old-paths.conf", backend))
            server = server.replace("server_name lab.example.org;",
                                    f"server_name lab.example.org;\n    include {old_paths};")
        (self.folder / "fulab.conf").write_text(server)
        temp = {kind: self.folder / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        main = self.folder / "nginx.conf"
        main.write_text("\n".join([
            "daemon off;", "worker_processes 1;", f"pid {self.folder / 'nginx.pid'};",
            f"error_log {self.folder / 'error.log'} info;",
            *(["user root;"] if os.geteuid() == 0 else []),
            "events { worker_connections 512; }",
            "http {",
            f"    access_log {self.folder / 'access.log'};",
            *(f"    {kind}_temp_path {path};" for kind, path in temp.items()),
            f"    include {self.folder / 'fulab.conf'};",
            "}", ""]))
        return main

    def start(self, timeout: float = 30) -> "Nginx":
        import time

        pid_file = self.folder / "nginx.pid"
        with open(self.folder / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(["/usr/sbin/nginx", "-c", str(self.write_config()), "-p", str(self.folder)],
                                            stdout=subprocess.DEVNULL, stderr=stderr)
        # nginx offers no readiness event; it writes its pid file once its sockets listen.
        for _ in range(int(timeout / 0.05)):
            if pid_file.exists() or self.process.poll() is not None:
                break
            time.sleep(0.05)
        if not pid_file.exists():
            self.stop()
            log = (self.folder / "error.log").read_text() if (self.folder / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {(self.folder / 'stderr.log').read_text()}\n{log}")
        return self

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self):
        stop_process(self.process)


def real_sample_files() -> list[Path]:
    """The samples recorded by the real agents (not the curated format-coverage files)."""
    return [path for path in sample_files() if "curated-not-real" not in path.parts]


def derived_session(path: Path, size: int, seed: int = 0, big_lines: int = 3, big_line_size: int = 3 << 20) -> Path:
    """Write a real-shaped session of about `size` bytes to `path`, derived from the real samples.

    Its lines are the real samples' lines, byte for byte, in runs of whole
    sessions; `big_lines` of them, spread through the file, are the samples'
    longest real line (a Claude tool result) with its output replaced by real
    sample text repeated to 1 to `big_line_size` bytes, as a session that
    printed a huge file would have.  Same arguments, same bytes.
    """
    import random

    rng = random.Random(seed)
    sessions = [path.read_bytes() for path in real_sample_files()]
    longest = max((line for data in sessions for line in data.split(b"\n")), key=len)
    template = orjson.loads(longest)
    text = b"".join(sessions).decode("utf-8")
    big_at = sorted(rng.sample(range(1, 100), big_lines)) if big_lines else []
    written = 0
    with open(path, "wb") as out:
        while written < size:
            if big_at and written >= size * big_at[0] // 100:
                big_at.pop(0)
                wanted = rng.randint(1 << 20, max(1 << 20, big_line_size))
                template["toolUseResult"]["stdout"] = (text * (wanted // len(text) + 1))[:wanted]
                data = orjson.dumps(template) + b"\n"
            else:
                data = sessions[rng.randrange(len(sessions))]
            out.write(data)
            written += len(data)
    return path


def in_process_site(store, max_message_size: int = 64 << 20):
    """The daemon's site with its upload endpoint on `store`, for tests that run it in their own reactor."""
    from twisted.internet import reactor

    from fulabd import web
    from fulabd.access import Gate
    from fulabd.upload import UploadFactory

    gate = Gate()
    uploads = UploadFactory(store, clock=reactor, max_message_size=max_message_size, admit=gate.admit,
                            reactor=reactor)
    return web.LabSite(web.WebSocketDispatch(uploads), gate)


# -- raw WebSocket, for what well-behaved client libraries refuse to send (or answer by themselves) --

def open_raw(port: int, path: str = "/fulab/lab/upload/ws") -> socket.socket:
    """A WebSocket connection done by hand: the socket, after the 101 response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(handshake_request(port, path))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, f"closed during the handshake: {response!r}"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def handshake_request(port: int, path: str = "/fulab/lab/upload/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def frame(opcode: int, payload: bytes, length: int | None = None, fin: bool = True) -> bytes:
    """A masked client frame; `length` may claim another payload length than the real one."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def read_frames(sock: socket.socket, count: int | None = None) -> list[tuple[int, bytes]]:
    """The server's frames until it closes the connection (or until `count` frames came)."""
    data = b""
    while (count is None or len(parse_frames(data)) < count) and (chunk := recv_or_reset(sock)):
        data += chunk
    return parse_frames(data)


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while len(data) >= 2:
        opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + length:
            break
        frames.append((opcode, data[offset:offset + length]))
        data = data[offset + length:]
    return frames


def recv_or_reset(sock) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def close_code(frames) -> int | None:
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    return struct.unpack("!H", closes[0][:2])[0] if closes and len(closes[0]) >= 2 else None


def interruptible():
    """In a child: Ctrl-C (SIGINT) as a terminal's foreground process gets it, even when the tests themselves
    run in the background (`cmd &` or `nohup` ignore SIGINT, and an ignored signal stays ignored in children,
    so the uploader would never see the SIGINT a test sends it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Uploader:
    """The real `fulab-upload` command in a subprocess; its output is collected line by line."""

    running: set["Uploader"] = set()  # killed after each test, so a failed test leaves none behind

    def __init__(self, *args: str):
        self.args = list(args)
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []
        self._lines = threading.Condition()

    def start(self) -> "Uploader":
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, str(REPO / "bin" / "fulab-upload"), *self.args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=interruptible)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        Uploader.running.add(self)
        return self

    def _read(self, process):
        for raw in process.stdout:
            with self._lines:
                self.output.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._lines.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 60, count: int = 1) -> list[str]:
        """The first `count` output lines matching `pattern` (waiting for them)."""
        regex = re.compile(pattern)

        def found():
            matches = [line for line in self.output if regex.search(line)]
            return matches if len(matches) >= count else None

        with self._lines:
            matches = self._lines.wait_for(found, timeout)
        if not matches:
            raise AssertionError(f"no {count} output line(s) matching {pattern!r}:\n" + "\n".join(self.output[-40:]))
        return matches

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def kill(self):
        kill_process(self.process)

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


class CuttableProxy:
    """A loopback TCP proxy to `port` whose connections can be cut at will: a real network fault.

    `cut_after(n)` lets n more client bytes through and then drops every
    connection, so the cut lands inside a WebSocket frame.  `reached(n)` is set
    once n more client bytes went through, and holds the client's bytes there
    until `go_on()`, so a test kills a process at that byte, however fast the
    rest would have followed.  `requests` keeps the first bytes each client sent
    (its HTTP upgrade request).
    """

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.cuts = 0
        self.forwarded = 0  # client bytes let through, over all connections
        self._marks: list[tuple[int, threading.Event]] = []
        self._pairs: list = []
        self._frozen: set = set()
        self._budget: int | None = None
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source, sink, upstream: bool):
        first = upstream
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if source in self._frozen:
                continue
            if first:
                self.requests.append(data)
                first = False
            cut, reached = False, []
            if upstream:
                with self._lock:
                    if self._budget is not None:
                        if len(data) >= self._budget:
                            data, cut = data[:self._budget], True
                        else:
                            self._budget -= len(data)
                    self.forwarded += len(data)
                    reached = [mark for mark in self._marks if mark[0] <= self.forwarded]
                    self._marks = [mark for mark in self._marks if mark[0] > self.forwarded]
            try:
                sink.sendall(data)
            except OSError:
                break
            for _, event in reached:
                event.set()
            if reached:
                self._flowing.wait()
            if cut:
                self.cut()
                break
        for end in (source, sink):
            try:
                end.close()
            except OSError:
                pass

    def freeze(self):
        """Open connections go silent both ways but stay open: a dead link (laptop asleep, Wi-Fi gone)."""
        with self._lock:
            self._frozen.update(end for pair in self._pairs for end in pair)

    def reached(self, client_bytes: int) -> threading.Event:
        """An event set once `client_bytes` more client bytes have gone through (to kill something right there)."""
        event = threading.Event()
        with self._lock:
            self._flowing.clear()
            self._marks.append((self.forwarded + max(1, client_bytes), event))
        return event

    def cut_after(self, client_bytes: int):
        with self._lock:
            self._budget = client_bytes

    def cut(self):
        """Drop every open connection at once (RST, as a dead link or a crashed proxy would)."""

        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._budget = None
            self.cuts += 1
        for pair in pairs:
            for end in pair:
                try:
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    end.shutdown(socket.SHUT_RDWR)
                    end.close()
                except OSError:
                    pass

    def go_on(self):
        """Let client bytes through again after a `reached` mark."""
        self._flowing.set()

    def close(self):
        self.listener.close()
        self.go_on()
        self.cut()


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_missing() -> str | None:
    """Why a real browser cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: install it with `apt-get install {package}` (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install '.[test]'"
    return None


def nginx_missing() -> str | None:
    """Why the real nginx cannot run here, or None."""
    if shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK):
        return None
    return "nginx not found: install it with `apt-get install nginx` (.ci/run does)"


def skip_without(reason: str | None):
    """Skip the calling test for a missing program, saying how to install it; under CI
    (`FULAB_REQUIRE_ALL=1`, set by .ci/run) fail instead, so that CI runs every test."""
    import pytest
    if reason and os.environ.get("FULAB_REQUIRE_ALL") == "1":
        pytest.fail(reason, pytrace=False)
    if reason:
        pytest.skip(reason)


def start_chromium(profile: Path):
    """Headless Chromium driven by the system chromedriver; Selenium Manager never downloads anything."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
