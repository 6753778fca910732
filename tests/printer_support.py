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
    Feed C{chunks} to a PrinterFramer; return (jobs, infos, the queries met
    in the stream, the bytes left at close, and what the end of input does
    with them: "end" (a job) or "drop" (PJL only, a status poll)).  Each
    info has C{pjl_job_name}, C{pjl_language} and C{ended_by} (the End's meta).
    """
    import types

    from rawsvc.triggers.framing import Data, Drop, End, Query
    from rawsvc.triggers.printer_framing import PrinterFramer

    f = PrinterFramer(**kw)
    jobs, infos, queries, cur = [], [], [], []

    def info(meta):
        return types.SimpleNamespace(pjl_job_name=meta["pjl_job_name"], pjl_language=meta["pjl_language"],
                                     ended_by=meta["eoj"])

    for chunk in chunks:
        for ev in f.feed(chunk):
            if isinstance(ev, Data):
                cur.append(ev.data)
            elif isinstance(ev, End):
                jobs.append(b"".join(cur))
                infos.append(info(ev.meta))
                cur = []
            elif isinstance(ev, Query):
                queries.append(ev.value)
    verdict = None
    for ev in f.end_of_input("half-close"):
        if isinstance(ev, Data):
            cur.append(ev.data)
        elif isinstance(ev, Query):
            queries.append(ev.value)
        elif isinstance(ev, End):
            verdict = "end"
        elif isinstance(ev, Drop):
            verdict = "drop"
    return jobs, infos, queries, b"".join(cur), verdict
