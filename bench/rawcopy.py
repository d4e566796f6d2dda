"""
The physical ceiling for bulk upload: the same bytes copied over loopback TCP
into a file, fdatasynced, then acknowledged.  No framing, no parsing.

Server: `python -m bench.rawcopy DEST` prints its port, takes one connection,
writes everything to DEST, fdatasyncs at EOF and answers `ok`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DAEMON_CPU, pin

CHUNK = 1 << 20


def serve(destination: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    connection, _ = listener.accept()
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buffer = bytearray(CHUNK)
    while received := connection.recv_into(buffer):
        view = memoryview(buffer)[:received]
        while view:
            view = view[os.write(fd, view):]
    os.fdatasync(fd)
    os.close(fd)
    connection.sendall(b"ok")
    connection.close()


def copy(source: Path, destination: Path) -> float:
    """Seconds to copy `source` into `destination` through a loopback socket, durably."""
    server = subprocess.Popen([sys.executable, "-m", "bench.rawcopy", str(destination)], stdout=subprocess.PIPE,
                              cwd=str(Path(__file__).resolve().parent.parent))
    pin(server.pid, DAEMON_CPU)
    port = int(server.stdout.readline())
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(source, "rb") as f:
        while chunk := f.read(CHUNK):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(2) == b"ok"
    elapsed = time.perf_counter() - started
    server.wait(30)
    return elapsed


if __name__ == "__main__":
    serve(sys.argv[1])
