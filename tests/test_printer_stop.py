"""
A clean stop keeps the jobs of clients waiting in a printer's queue: one
that already sent its whole job has it stored (its sender may count the
close as printed); one still sending is reset, so it sends again.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from support import port_of, wait_until


def _ending(s: socket.socket) -> str:
    """Read until the printer ends the connection: "closed" (the job is its) or "reset"."""
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        return "reset"
    return "closed"


def _client(port: int, data: bytes, sent: threading.Event) -> str:
    """Write the job and close fully (as python-escpos does); how the printer answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        sent.set()
        return _ending(s)


@pytest_twisted.inlineCallbacks
def test_stop_stores_the_job_a_held_client_already_sent(tmp_path):
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    out = tmp_path / "out"
    svc = RawService(loads(f"""
[service]
state_dir = "{tmp_path}/state"
[[trigger]]
name = "p"
type = "printer"
listen = "tcp:0:interface=127.0.0.1"
flow = "slow"
pjl = false
zpl_host_status = false

[[flow]]
name = "slow"
actions = [ {{ type = "support:SleepAction", seconds = "1" }}, {{ type = "file", folder = "{out}" }} ]
""", str(tmp_path / "rawsvc.toml"), BuildContext()))
    svc.startService()
    yield svc.sink.service.started
    port = port_of(svc, "p")
    first, second = os.urandom(5000), os.urandom(3000)
    e1, e2 = threading.Event(), threading.Event()
    d1 = deferToThread(_client, port, first, e1)
    yield wait_until(lambda: svc.triggers["p"].active is not None)
    d2 = deferToThread(_client, port, second, e2)
    yield wait_until(lambda: svc.triggers["p"].waiting and svc.triggers["p"].waiting[0]._held_eof)
    yield svc.stopService()
    answers = [(yield d1), (yield d2)]
    assert answers == ["closed", "closed"]
    # Both acknowledged (a clean close) and both stored: the unfinished one resumes at the next start.
    from rawsvc.spool.schema import connect, db_path

    conn = connect(db_path(svc.context.state_dir), readonly=True)
    try:
        sizes = sorted(r["size"] for r in conn.execute("SELECT size FROM jobs"))
    finally:
        conn.close()
    assert sizes == [3000, 5000]


def _slow_client(port: int, data: bytes, started: threading.Event) -> str:
    """Sends part of its job, then (1 s later, the stop under way) the rest, and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data[:1000])
        started.set()
        time.sleep(1.0)
        s.sendall(data[1000:])
        s.shutdown(socket.SHUT_WR)
        return _ending(s)


@pytest_twisted.inlineCallbacks
def test_stop_lets_the_served_client_finish_its_job_while_a_held_one_is_stored(tmp_path):
    """
    The client being served is still sending when the stop begins, and one
    waits in the queue with its whole job: both jobs are stored, and the
    printer's state takes a submit without its own receive (it raised, and
    the served client's job was lost behind a clean close).
    """
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    svc = RawService(loads(f"""
[service]
state_dir = "{tmp_path}/state"
[[trigger]]
name = "p"
type = "printer"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
pjl = false
zpl_host_status = false
[[flow]]
name = "f"
actions = [ {{ type = "file", folder = "{tmp_path}/out" }} ]
""", str(tmp_path / "rawsvc.toml"), BuildContext()))
    svc.startService()
    yield svc.sink.service.started
    port = port_of(svc, "p")
    started = threading.Event()
    da = deferToThread(_slow_client, port, b"A" * 5000, started)
    yield wait_until(lambda: svc.triggers["p"].active is not None and started.is_set())
    db = deferToThread(_client, port, b"B" * 3000, threading.Event())
    yield wait_until(lambda: svc.triggers["p"].waiting and svc.triggers["p"].waiting[0]._held_eof)
    yield svc.stopService()
    assert [(yield da), (yield db)] == ["closed", "closed"]
    from rawsvc.spool.schema import connect, db_path

    conn = connect(db_path(svc.context.state_dir), readonly=True)
    try:
        sizes = sorted(r["size"] for r in conn.execute("SELECT size FROM jobs"))
    finally:
        conn.close()
    assert sizes == [3000, 5000]
