"""Helpers shared by the admin tests: a running service from a config, jobs over TCP."""

from __future__ import annotations

import socket
import textwrap

import pytest_twisted
from twisted.internet.defer import inlineCallbacks

from rawsvc.config import loads
from rawsvc.context import BuildContext


def start_reactor_once():
    """Run the reactor once so its own start-up sockets predate each test's snapshot."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))


def config_text(state_dir, admin: str = "", spool: bool = True) -> str:
    return textwrap.dedent(
        f"""
        [service]
        state_dir = "{state_dir}"
        spool = {str(spool).lower()}

        [[trigger]]
        name = "orders"
        type = "tcp"
        listen = "tcp:0:interface=127.0.0.1"
        execute_on = "disconnect"
        flow = "logged"

        [[flow]]
        name = "logged"
        actions = [ {{ type = "log", message = "got ${{size}} bytes" }} ]
        """
    ) + textwrap.dedent(admin)


def build_service(reactor, text: str):
    from rawsvc.service import RawService

    config = loads(text, "rawsvc.toml", BuildContext(reactor=reactor))
    return RawService(config)


def admin_port(service, name: str):
    """The listening port of the started admin listener C{name}."""
    port = service.getServiceNamed(name).port
    assert port is not None, f"{name} is not listening"
    return port


def trigger_port(service, name: str = "orders") -> int:
    return service.triggers[name].port.getHost().port


@inlineCallbacks
def send_job(reactor, port: int, data: bytes, counters, expect_ok: int):
    """Send C{data} and half-close, from a thread; wait until the job is counted."""
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass

    yield deferToThread(client)
    for _ in range(200):
        if counters.jobs_ok + counters.jobs_failed >= expect_ok:
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"job not counted: {counters}")
