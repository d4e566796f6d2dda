"""
The listener supervisor: real ports, a controlled clock.
"""

import socket

import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task
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
