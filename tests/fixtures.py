"""
Real parts for tests: the daemon as its own process on a loopback port, and
the sample session files.  Every test that needs a daemon gets it from here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
# `shared/samples` beside the clone, or beside a parent folder (git worktrees live one level deeper)
SAMPLES = next((folder / "shared" / "samples" for folder in REPO.parents
                if any((folder / "shared" / "samples").glob("*/**/*.jsonl"))), REPO.parent / "shared" / "samples")
LISTENING = re.compile(r"listening on (?P<description>\S+) \(.*port=(?P<port>\d+)\)")


def sample_files() -> list[Path]:
    """Every real and curated sample session file."""
    files = sorted(SAMPLES.rglob("*.jsonl"))
    assert files, f"no sample sessions under {SAMPLES}"
    return files


def sample_lines(path: Path) -> list[str]:
    """A file's lines as raw strings, without their newlines."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


class Daemon:
    """`twistd -n fulab` in a subprocess, on a free loopback port, with its own store."""

    def __init__(self, root: Path, *args: str, port: str = "tcp:0:interface=127.0.0.1"):
        self.root = Path(root)
        self.args = list(args)
        self.port_description = port
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []
        self._listening = threading.Event()
        self._lines = threading.Condition()

    def start(self, timeout: float = 30) -> "Daemon":
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self._listening.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "fulab", "--port", self.port_description, "--root", str(self.root), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(self.root.parent))
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self._listening.wait(timeout):
            self.stop()
            raise RuntimeError("daemon did not start listening:\n" + "\n".join(self.log[-40:]))
        return self

    def _read(self, process):
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lines:
                self.log.append(line)
                self._lines.notify_all()
            match = LISTENING.search(line)
            if match and not self._listening.is_set():
                self.port = int(match["port"])
                self._listening.set()

    def wait_for_log(self, pattern: str, timeout: float = 30) -> str:
        """The first log line (from now on or earlier) matching `pattern`."""
        regex = re.compile(pattern)
        with self._lines:
            found = self._lines.wait_for(lambda: next((l for l in self.log if regex.search(l)), None), timeout)
        if not found:
            raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.log[-40:]))
        return found

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self):
        """SIGKILL: the crash case."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss(self) -> int:
        """The daemon process's resident memory, in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) * 1024

    def restart(self, kill: bool = True) -> "Daemon":
        """Stop (SIGKILL by default) and start again on the same port."""
        self.kill() if kill else self.stop()
        self.port_description = f"tcp:{self.port}:interface=127.0.0.1"
        return self.start()


def get_json(url: str, headers: dict | None = None):
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


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


class Uploader:
    """The real `fulab-upload` in a subprocess, uploading one file (and exiting once done, with `once`)."""

    def __init__(self, url: str, path: Path, *args: str, once: bool = True):
        self.command = [sys.executable, str(REPO / "bin" / "fulab-upload"), "--url", url, "--path", str(path),
                        "--quiet", *(["--once"] if once else []), *args]
        self.process: subprocess.Popen | None = None

    def start(self) -> "Uploader":
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONPATH=str(REPO)))
        return self

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 300) -> int:
        """Its exit code once it has exited (after its last ack, with `--once`)."""
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
            raise AssertionError(f"fulab-upload did not finish in {timeout} s:\n{output.decode()[-2000:]}")
        self.output = output.decode("utf-8", "replace")
        return self.process.returncode


class CuttingProxy:
    """A loopback TCP proxy to the daemon that can fire a fault at an exact byte of the upload stream.

    `arm(at, cut=True)` resets the connection in both directions after
    exactly `at` more client→server bytes (so mid-frame, almost always);
    with `cut=False` it only sets the returned event at that byte, for the
    test to kill something at that moment.
    """

    def __init__(self, target_port):
        import socket

        self.target_port = target_port  # a callable: the daemon's current port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarded = 0
        self._lock = threading.Lock()
        self._armed: tuple[int, bool, threading.Event] | None = None
        self._pairs: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def arm(self, at: int, cut: bool) -> threading.Event:
        fired = threading.Event()
        with self._lock:
            self._armed = (self.forwarded + max(1, at), cut, fired)
        return fired

    def close(self):
        self.listener.close()
        for pair in list(self._pairs):
            self._abort(pair)

    def _accept(self):
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port()), timeout=10)
                server.settimeout(None)
            except OSError:
                self._abort((client,))
                continue
            pair = (client, server)
            self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False), daemon=True).start()

    def _pump(self, source, destination, pair, upstream: bool):
        try:
            while chunk := source.recv(1 << 16):
                cut_here = None
                if upstream:
                    with self._lock:
                        armed = self._armed
                        if armed and self.forwarded + len(chunk) >= armed[0]:
                            self._armed = None
                            cut_here = armed[0] - self.forwarded
                        self.forwarded += len(chunk)
                if cut_here is not None and armed[1]:
                    destination.sendall(chunk[:cut_here])
                    armed[2].set()
                    break
                destination.sendall(chunk)
                if cut_here is not None:
                    armed[2].set()
        except OSError:
            pass
        self._abort(pair)

    def _abort(self, sockets):
        """Close with a reset, as a dropped network path does."""
        import socket
        import struct

        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv on it
            except OSError:
                pass
            sock.close()
        if sockets in self._pairs:
            self._pairs.remove(sockets)
