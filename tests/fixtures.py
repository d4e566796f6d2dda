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
# Next to the clone (CI, /work/main) or two levels up (a worktree under /work/wt/).
SAMPLES = next((p for p in (REPO.parent / "shared" / "samples", REPO.parent.parent / "shared" / "samples")
                if any(p.rglob("*.jsonl"))), REPO.parent / "shared" / "samples")
LISTENING = re.compile(r"listening on (?P<description>\S+) \(.*port=(?P<port>\d+)\)")


def sample_files() -> list[Path]:
    """Every real and curated sample session file."""
    return sorted(SAMPLES.rglob("*.jsonl"))


def sample_lines(path: Path) -> list[str]:
    """A file's lines as raw strings, without their newlines."""
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


class Daemon:
    """`twistd -n fulab` in a subprocess, on a free loopback port, with its own store."""

    def __init__(self, root: Path, *args: str, port: str = "tcp:0:interface=127.0.0.1", env: dict | None = None,
                 twistd_args: tuple = ()):
        self.root = Path(root)
        self.args = list(args)
        self.env = env or {}
        self.twistd_args = list(twistd_args)
        self.port_description = port
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []
        self._listening = threading.Event()
        self._lines = threading.Condition()

    def start(self, timeout: float = 30) -> "Daemon":
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **self.env)
        self._listening.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", *self.twistd_args,
             "fulab", "--port", self.port_description, "--root", str(self.root), *self.args],
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
