"""
The per-trigger spill budget (issue 12, item 9): concurrent large jobs past
C{spill_budget} bytes of spill files are refused on the wire, the others
stored; the budget comes back when their files go.
"""

from __future__ import annotations

import os
import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from printer_support import GateAction, archived, wait_for
from support import port_of, recv_all

JOB = 400_000


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s, timeout=10)


@pytest_twisted.inlineCallbacks
def test_jobs_past_the_spill_budget_are_refused_and_the_others_stored(service_factory, tmp_path):
    jobs = tmp_path / "jobs"
    svc = service_factory(f"""spill_threshold = 65536
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
spill_budget = 1000000
refusal = "REFUSED ${{reason}}\\n"
[[flow]]
name = "f"
actions = [ {{ type = "printer_support:GateAction" }},
            {{ type = "file", folder = "{jobs}", name = "${{job_id}}.bin" }},
            {{ type = "reply", data = "OK\\n" }} ]
""")
    t = svc.triggers["t"]
    port = port_of(svc, "t")
    data = [os.urandom(JOB) for _ in range(4)]
    try:
        first = deferToThread(_send, port, data[0])
        second = deferToThread(_send, port, data[1])
        yield wait_for(lambda: len(GateAction.gates) == 2)  # 800,000 bytes of spill files held
        assert t.spill_budget.used == 2 * JOB
        third = yield deferToThread(_send, port, data[2])  # would need 1,200,000
        assert third == b"REFUSED the trigger's spill budget (1000000 bytes of concurrent large jobs) is spent\n"
        assert t.spill_budget.used == 2 * JOB
        assert sorted(os.listdir(tmp_path / "state" / "tmp")) and len(os.listdir(tmp_path / "state" / "tmp")) == 2
    finally:
        GateAction.open_all()
    assert (yield first) == b"OK\n" and (yield second) == b"OK\n"
    yield wait_for(lambda: t.spill_budget.used == 0)
    fourth = deferToThread(_send, port, data[3])  # the budget is back
    yield wait_for(lambda: len(GateAction.gates) == 1)
    GateAction.open_all()
    assert (yield fourth) == b"OK\n"
    assert sorted(archived(jobs)) == sorted([data[0], data[1], data[3]])
    assert os.listdir(tmp_path / "state" / "tmp") == []
    assert t.counters.jobs_refused == 1
