"""Helpers for the printer tests: configs, a gate action, UDP queries."""

from __future__ import annotations

import json
import socket
import time

from twisted.internet.defer import Deferred
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.interfaces import IAction, IActionType
from rawsvc.triggers.pjl import UEL  # noqa: F401  (re-exported for tests)


@provider(IActionType)
@implementer(IAction)
class GateAction:
    """Test action: each job waits until the test opens its gate."""

    type_name = "gate"
    options = o.Schema()
    gates: list[Deferred] = []

    @classmethod
    def from_config(cls, options, context):
        return cls()

    def run(self, job):
        d: Deferred = Deferred()
        GateAction.gates.append(d)
        return d

    @classmethod
    def open_all(cls):
        gates, cls.gates = cls.gates, []
        for d in gates:
            d.callback(None)


def table(kind: str, **keys) -> str:
    return f"[[{kind}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def printer(name: str = "p", flow: str = "archive", **keys) -> str:
    base = {"name": name, "type": "printer", "listen": "tcp:0:interface=127.0.0.1", "flow": flow}
    base.update(keys)
    return table("trigger", **base)


def status_trigger(name: str = "p-status", printer_name: str = "p", **keys) -> str:
    base = {"name": name, "type": "appsocket-status", "listen": "udp:0:interface=127.0.0.1", "printer": printer_name}
    base.update(keys)
    return table("trigger", **base)


def archive_flow(folder, name: str = "archive", file_name: str = "${job_id}.prn", gate: bool = False) -> str:
    actions = []
    if gate:
        actions.append('{ type = "printer_support:GateAction" }')
    actions.append(f'{{ type = "file", folder = "{folder}", name = "{file_name}" }}')
    return f'[[flow]]\nname = "{name}"\nactions = [ {", ".join(actions)} ]\n'


FAIL_FLOW = """
[[flow]]
name = "fail"
actions = [ { type = "parse", regex = '^(?P<never>NEVER MATCHES)$' } ]
"""


def archived(folder) -> list[bytes]:
    """The archived jobs, oldest first (job ids sort by time)."""
    import os

    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    out = []
    for n in names:
        with open(os.path.join(folder, n), "rb") as f:
            out.append(f.read())
    return out


def wait_for(predicate, timeout: float = 5.0):
    """A Deferred firing once C{predicate()} is true (polled on the reactor)."""
    from twisted.internet import reactor
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    @inlineCallbacks
    def poll():
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {predicate}")
            yield deferLater(reactor, 0.01, lambda: None)

    return poll()


def udp_query(port: int, payload: bytes = b"", timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def udp_port(service, name: str = "p-status") -> int:
    return service.triggers[name].port.getHost().port


def frame_stream(chunks, **kw):
    """
    Feed C{chunks} to a PrinterFramer; return (jobs, infos, commands met in
    the stream, leftover bytes at close, the framer).
    """
    from rawsvc.triggers.framing import DATA
    from rawsvc.triggers.printer_framing import PrinterFramer

    commands = []
    f = PrinterFramer(commands.append, **kw)
    jobs, infos, cur = [], [], []
    for chunk in chunks:
        for kind, value in f.feed(chunk):
            if kind == DATA:
                cur.append(value)
            else:
                jobs.append(b"".join(cur))
                infos.append(value)
                cur = []
    cur.append(f.pending())
    return jobs, infos, commands, b"".join(cur), f
