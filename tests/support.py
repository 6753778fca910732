"""Helpers for integration tests: a real RawService from a TOML string."""

from __future__ import annotations

import socket
import time

import pytest_twisted
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.interfaces import IAction, IActionType


def start_service(tmp_path, toml: str, sink=None):
    """Build and start a RawService from TOML text; state_dir is tmp_path."""
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    text = f'[service]\nstate_dir = "{tmp_path}/state"\nspool = false\n' + toml
    config = loads(text, str(tmp_path / "rawsvc.toml"), BuildContext())
    service = RawService(config, sink=sink)
    service.startService()
    return service


def stop_service(service):
    return pytest_twisted.blockon(service.stopService())


def port_of(service, trigger: str) -> int:
    return service.triggers[trigger].port.getHost().port


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the server closes (or timeout)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf and time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf


def wait_until(predicate, timeout: float = 10.0):
    """A Deferred that fires once C{predicate()} is true (polled on the reactor), or fails after C{timeout}."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    d: Deferred = Deferred()
    deadline = time.monotonic() + timeout

    def check():
        if predicate():
            d.callback(True)
        elif time.monotonic() > deadline:
            d.errback(AssertionError("condition not met in time"))
        else:
            reactor.callLater(0.02, check)

    check()
    return d


@provider(IActionType)
@implementer(IAction)
class SleepAction:
    """Test action: waits ${seconds} (a template) on the reactor's clock."""

    type_name = "sleep"
    options = o.Schema(o.Option("seconds", str, "0", o.template))

    def __init__(self, seconds, reactor):
        self.seconds = seconds
        self.reactor = reactor

    @classmethod
    def from_config(cls, options, context):
        return cls(options["seconds"], context.reactor)

    def run(self, job):
        from twisted.internet.task import deferLater

        return deferLater(self.reactor, float(self.seconds.render_text(job.variables)), lambda: None)
