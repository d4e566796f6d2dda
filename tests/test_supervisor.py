"""
The listener supervisor: real ports, a controlled clock; and, in memory, what
an idle daemon's supervisor logs.
"""

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web import resource, server

from fulabd import supervisor
from fulabd.hub import Hub
from fulabd.store import SessionStore
from tests.fixtures import in_process_site


def busy_port():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder, holder.getsockname()[1]


def site():
    return server.Site(resource.Resource())


@pytest_twisted.ensureDeferred
async def test_busy_port_is_retried_every_interval_until_it_is_free():
    holder, port = busy_port()
    clock = task.Clock()
    listener = supervisor.ListenerSupervisor(
        f"tcp:{port}:interface=127.0.0.1", endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1"),
        site(), clock, interval=10, probe_endpoint=lambda address: None)
    listener.startService()
    try:
        await listener._check_running
        assert listener.port is None and listener.failures == 1
        assert "Address already in use" in listener.last_error or "in use" in listener.last_error
        clock.advance(10)
        await listener._check_running
        assert listener.port is None and listener.failures == 2
        holder.close()
        clock.advance(10)
        await listener._check_running
        assert listener.port is not None and listener.address.port == port
        assert listener.restarts == 0, "a first successful listen is not a restart"
    finally:
        holder.close()
        await defer.maybeDeferred(listener.stopService)


@pytest_twisted.ensureDeferred
async def test_a_port_that_stays_busy_is_said_once_a_minute_not_at_every_retry():
    from twisted.logger import globalLogPublisher

    holder, port = busy_port()
    clock = task.Clock()
    description = f"tcp:{port}:interface=127.0.0.1"
    listener = supervisor.ListenerSupervisor(description, endpoints.serverFromString(reactor, description), site(),
                                             clock, interval=10, probe_endpoint=lambda address: None)
    said = []

    def observe(event):
        if event.get("log_namespace") == "fulabd.supervisor.ListenerSupervisor" and "cannot listen" in event.get(
                "log_format", ""):
            said.append(event)

    globalLogPublisher.addObserver(observe)
    listener.startService()
    try:
        await listener._check_running
        for _ in range(12):
            clock.advance(10)
            await listener._check_running
        assert listener.failures == 13
        assert len(said) == 3, "at 0, 60 and 120 s"
        assert said[0]["since"] == "" and said[1]["since"] == " (5 more failed tries since the last message)"
    finally:
        globalLogPublisher.removeObserver(observe)
        holder.close()
        await defer.maybeDeferred(listener.stopService)


def daemon_site(tmp_path):
    store = SessionStore(str(tmp_path), clock=reactor, hub=Hub())
    store.startService()
    return in_process_site(store)


@pytest_twisted.ensureDeferred
async def test_self_probe_pings_the_real_port_and_relistens_when_it_does_not_answer(tmp_path):
    clock = task.Clock()
    listener = supervisor.ListenerSupervisor(
        "tcp:0:interface=127.0.0.1", endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"),
        daemon_site(tmp_path), clock, interval=10,
        probe_endpoint=lambda address: supervisor.loopback_endpoint(address, reactor))
    listener.startService()
    try:
        await listener._check_running
        first_port = listener.port
        clock.advance(10)
        await listener._check_running
        assert listener.port is first_port and listener.failures == 0, listener.last_error

        # A port that accepts TCP but never answers the WebSocket ping: what the old supervisor could not see.
        port_number = first_port.getHost().port
        await first_port.stopListening()
        mute = socket.socket()
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        mute.bind(("127.0.0.1", port_number))
        mute.listen(5)
        listener.probe_endpoint = lambda address: endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)
        listener.endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        clock.advance(10)
        clock.advance(supervisor.PROBE_TIMEOUT)
        await listener._check_running
        mute.close()
        assert listener.failures == 1 and "self-probe failed" in listener.last_error
        assert listener.port is not None and listener.port is not first_port
        assert listener.restarts == 1
    finally:
        await defer.maybeDeferred(listener.stopService)


def in_memory_listener(lab, probe_endpoint) -> supervisor.ListenerSupervisor:
    """A supervisor of the in-memory site, on a port of a memory reactor, on the site's clock."""
    return supervisor.ListenerSupervisor(
        "tcp:5056:interface=127.0.0.1", endpoints.TCP4ServerEndpoint(MemoryReactor(), 5056, interface="127.0.0.1"),
        lab.site, lab.clock, interval=10, probe_endpoint=probe_endpoint, probe_headers=lab.gate.probe_headers)


def lines_at(events, level: LogLevel) -> list[str]:
    return [formatEvent(event) for event in events if event["log_level"] >= level]


def test_an_idle_daemon_says_where_its_ui_is_then_logs_nothing_while_its_probes_pass(lab):
    listener = in_memory_listener(lab, lambda address: lab.client_endpoint())
    with capturedLogs() as starting:
        listener.startService()
    assert lines_at(starting, LogLevel.info) == [
        "listening on tcp:5056:interface=127.0.0.1 (IPv4Address(type='TCP', host='0.0.0.0', port=5056))",
        "web UI at http://127.0.0.1:5056/fulab/lab/"]
    with capturedLogs() as idle:
        for _ in range(60):
            lab.clock.advance(1)
            lab.flush()
    assert (listener.probes, listener.failures) == (6, 0)
    assert lines_at(idle, LogLevel.debug) == []  # twistd writes debug lines too
    listener.stopService()


def test_a_probe_that_gets_no_answer_is_logged_and_the_port_listened_again(lab):
    class Unanswered:
        def connect(self, factory):
            return defer.Deferred()  # a port that takes the connection and never answers

    listener = in_memory_listener(lab, lambda address: Unanswered())
    listener.startService()
    with capturedLogs() as probing:
        lab.clock.advance(10)
        lab.clock.advance(supervisor.PROBE_TIMEOUT)
    assert listener.failures == 1 and listener.port is not None
    problems = lines_at(probing, LogLevel.warn)
    assert len(problems) == 1 and "did not answer a WebSocket ping" in problems[0] and "listening again" in problems[0]
    assert "web UI at" not in " ".join(lines_at(probing, LogLevel.info))  # said once, at start-up
    listener.stopService()


@pytest.mark.parametrize("description, address, url", [
    ("tcp:5056", ("IPv4", "0.0.0.0", 5056), "http://127.0.0.1:5056/fulab/lab/"),
    ("tcp6:5056:interface=\\:\\:", ("IPv6", "::", 5056), "http://[::1]:5056/fulab/lab/"),
    ("tls:5057:interface=0.0.0.0", ("IPv4", "10.0.0.5", 5057), "https://10.0.0.5:5057/fulab/lab/"),
    ("unix:/run/fulab.sock", ("UNIX", "/run/fulab.sock", None), None),
])
def test_the_ui_url_of_each_kind_of_listener(description, address, url):
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    kind, host, port = address
    made = {"IPv4": lambda: IPv4Address("TCP", host, port), "IPv6": lambda: IPv6Address("TCP", host, port),
            "UNIX": lambda: UNIXAddress(host)}[kind]()
    assert supervisor.ui_url(description, made) == url
