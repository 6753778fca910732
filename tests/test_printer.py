"""Trigger printer: a JetDirect/AppSocket virtual printer, with real clients."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from conftest import ROOT, require_tool
from printer_support import (
    FAIL_FLOW,
    UEL,
    GateAction,
    archive_flow,
    archived,
    printer,
    wait_for,
)
from rawsvc.interfaces import ITrigger
from rawsvc.triggers import pjl
from support import port_of, recv_all, recv_until

CUPS_SOCKET = "/usr/lib/cups/backend/socket"


@pytest.fixture
def jobs_dir(tmp_path):
    return tmp_path / "jobs"


@pytest.fixture
def make(service_factory):
    yield service_factory
    GateAction.open_all()  # before service_factory stops the services


def run(cmd, **kw):
    """Run a client in a thread so the reactor keeps serving: (result, seconds)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    started = time.monotonic()
    d = deferToThread(subprocess.run, cmd, **kw)
    return d.addCallback(lambda result: (result, time.monotonic() - started))


in_thread = deferToThread


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def binary_job(n=300_000) -> bytes:
    data = os.urandom(n)
    # No markers by accident: binary data runs with eoj_ctrl_d = false anyway.
    return data.replace(UEL[:1], b"E")


# Printing with real clients ----------------------------------------------


@pytest_twisted.inlineCallbacks
def test_cups_socket_backend_prints_and_exits_at_once(make, jobs_dir, tmp_path):
    backend = require_tool(CUPS_SOCKET)
    svc = make(printer(eoj_ctrl_d=False, zpl_host_status=False) + archive_flow(jobs_dir))
    port = port_of(svc, "p")
    data = binary_job()
    (tmp_path / "job.bin").write_bytes(data)
    job = tmp_path / "job.bin"
    uri = f"socket://127.0.0.1:{port}/?snmp=no"
    # As PEERS.md: fd 3 is the back-channel, fd 4 the side channel.
    result, took = yield run(
        ["sh", "-c", f"exec '{backend}' 1 user title 1 '' '{job}' 3>'{tmp_path}/back.out' 4</dev/null"],
        env=dict(os.environ, DEVICE_URI=uri), stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert took < 5.0  # not CUPS's 90 s wait for a server that stays open
    yield wait_for(lambda: len(archived(jobs_dir)) == 1)
    assert archived(jobs_dir) == [data]


@pytest_twisted.inlineCallbacks
def test_nc_half_close_prints_and_returns_promptly(make, jobs_dir, tmp_path):
    nc = require_tool("nc")
    svc = make(printer(eoj_ctrl_d=False) + archive_flow(jobs_dir))
    data = binary_job(100_000)
    (tmp_path / "job.bin").write_bytes(data)
    with open(tmp_path / "job.bin", "rb") as f:
        result, took = yield run([nc, "-N", "127.0.0.1", str(port_of(svc, "p"))], stdin=f)
    assert result.returncode == 0
    assert took < 3.0
    yield wait_for(lambda: len(archived(jobs_dir)) == 1)
    assert archived(jobs_dir) == [data]


@pytest_twisted.inlineCallbacks
def test_client_that_closes_without_half_close_still_prints(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    port = port_of(svc, "p")

    def client():
        s = connect(port)
        s.sendall(b"^XA^FDhello^FS^XZ")
        s.close()

    yield in_thread(client)
    yield wait_for(lambda: archived(jobs_dir) == [b"^XA^FDhello^FS^XZ"])


def test_printer_provides_itrigger_and_reports_state(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    trigger = svc.triggers["p"]
    assert verifyObject(ITrigger, trigger)
    status = trigger.status()
    assert status["state"] == "idle" and status["listening"] and status["busy"] == "queue"


# Busy: refuse or queue ----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_busy_refuse_closes_the_port_so_a_second_client_is_refused(make, jobs_dir):
    nc = require_tool("nc")
    svc = make(printer(busy="refuse") + archive_flow(jobs_dir))
    trigger = svc.triggers["p"]
    port = port_of(svc, "p")
    first = yield in_thread(connect, port)
    try:
        yield in_thread(first.sendall, b"first job ")
        yield wait_for(lambda: trigger.state.state == "receiving")
        result, _ = yield run([nc, "-v", "-N", "127.0.0.1", str(port)], input=b"second", timeout=10)
        assert result.returncode != 0
        assert b"refused" in result.stderr
        assert trigger.listening  # busy, not down: /healthz stays green
        assert trigger.status()["accepting"] is False
        yield in_thread(first.sendall, b"ends here")
        yield in_thread(first.shutdown, socket.SHUT_WR)
        assert (yield in_thread(recv_all, first)) == b""
    finally:
        first.close()
    yield wait_for(lambda: trigger.port is not None)
    result, _ = yield run([nc, "-N", "127.0.0.1", str(port)], input=b"third", timeout=10)
    assert result.returncode == 0
    yield wait_for(lambda: archived(jobs_dir) == [b"first job ends here", b"third"])
    assert trigger.counters.connections_refused == 0  # ECONNREFUSED came from the kernel


@pytest_twisted.inlineCallbacks
def test_busy_queue_holds_clients_and_serves_them_in_order(make, jobs_dir):
    svc = make(printer(busy="queue", queue_depth=1) + archive_flow(jobs_dir))
    trigger = svc.triggers["p"]
    port = port_of(svc, "p")
    first = yield in_thread(connect, port)
    yield in_thread(first.sendall, b"one ")
    yield wait_for(lambda: trigger.state.state == "receiving")

    def second():
        s = connect(port)
        s.sendall(b"two")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s, timeout=10)

    d = deferToThread(second)
    yield wait_for(lambda: len(trigger.waiting) == 1)
    # The queue is full: the port is closed, a third client is refused.
    yield wait_for(lambda: trigger.port is None)
    with pytest.raises(ConnectionRefusedError):
        yield in_thread(connect, port)
    assert archived(jobs_dir) == []
    yield in_thread(first.sendall, b"done")
    first.close()
    assert (yield d) == b""
    yield wait_for(lambda: archived(jobs_dir) == [b"one done", b"two"])
    yield wait_for(lambda: trigger.port is not None)


# End-of-job markers ------------------------------------------------------


def _send(port, data: bytes) -> bytes:
    s = connect(port)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reply = recv_all(s)
    s.close()
    return reply


@pytest_twisted.inlineCallbacks
def test_ctrl_d_ends_a_job_and_the_next_job_follows(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    yield in_thread(_send, port_of(svc, "p"), b"%!PS\nshowpage\n\x04%!PS\nsecond\n\x04\r\n")
    yield wait_for(lambda: len(archived(jobs_dir)) == 2)
    assert archived(jobs_dir) == [b"%!PS\nshowpage\n\x04", b"%!PS\nsecond\n\x04"]


@pytest_twisted.inlineCallbacks
def test_after_eoj_ignore_drops_bytes_after_the_marker(make, jobs_dir):
    svc = make(printer(after_eoj="ignore") + archive_flow(jobs_dir))
    yield in_thread(_send, port_of(svc, "p"), b"%!PS\nfirst\n\x04trailing junk")
    yield wait_for(lambda: len(archived(jobs_dir)) == 1)
    yield (_sleep(0.1))
    assert archived(jobs_dir) == [b"%!PS\nfirst\n\x04"]


@pytest_twisted.inlineCallbacks
def test_ctrl_d_is_data_when_eoj_ctrl_d_is_off(make, jobs_dir):
    svc = make(printer(eoj_ctrl_d=False) + archive_flow(jobs_dir))
    yield in_thread(_send, port_of(svc, "p"), b"\x00\x04\x01\x04")
    yield wait_for(lambda: archived(jobs_dir) == [b"\x00\x04\x01\x04"])


@pytest_twisted.inlineCallbacks
def test_uel_closing_a_pjl_job_ends_it_with_its_name(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir, file_name="${pjl_job_name}-${eoj}.prn"))
    job1 = (UEL + b'@PJL JOB NAME="invoice"\r\n@PJL ENTER LANGUAGE=PCL\r\n\x1bE page \x1bE'
            + UEL + b'@PJL EOJ NAME="invoice"\r\n' + UEL)
    job2 = UEL + b"@PJL ENTER LANGUAGE=PCL\r\nsecond" + UEL
    yield in_thread(_send, port_of(svc, "p"), job1 + job2)
    yield wait_for(lambda: len(os.listdir(jobs_dir)) == 2 if jobs_dir.exists() else False)
    assert (jobs_dir / "invoice-uel.prn").read_bytes() == job1
    assert (jobs_dir / "-uel.prn").read_bytes() == job2


# Status on the back-channel ---------------------------------------------


@pytest_twisted.inlineCallbacks
def test_pjl_info_status_is_answered_on_the_same_connection(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    port = port_of(svc, "p")

    def client():
        s = connect(port)
        s.sendall(UEL + b"@PJL INFO STATUS\r\n")
        status = recv_until(s, pjl.FF)
        s.sendall(b"@PJL ECHO hello 42\r\n")
        echo = recv_until(s, pjl.FF)
        s.sendall(b"label data")
        s.shutdown(socket.SHUT_WR)
        rest = recv_all(s)
        s.close()
        return status, echo, rest

    status, echo, rest = yield in_thread(client)
    assert status == b'@PJL INFO STATUS\r\nCODE=10001\r\nDISPLAY="00 READY"\r\nONLINE=TRUE\r\n\x0c'
    assert echo == b"@PJL ECHO hello 42\r\n\x0c"
    assert rest == b""
    yield wait_for(lambda: archived(jobs_dir) == [UEL + b"label data"])  # queries are not print data


@pytest_twisted.inlineCallbacks
def test_zebra_host_status_is_three_stx_etx_lines(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    reply = yield in_thread(_send, port_of(svc, "p"), b"~HS")
    lines = reply.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert all(line.startswith(b"\x02") and line.endswith(b"\x03") for line in lines[:3])
    fields = [line[1:-1].split(b",") for line in lines[:3]]
    assert [len(f) for f in fields] == [12, 11, 2]
    assert fields[0][2] == b"0"  # not paused
    yield (_sleep(0.05))
    assert archived(jobs_dir) == []  # a status poll is not a job


@pytest_twisted.inlineCallbacks
def test_ustatus_job_reports_start_and_end(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    reply = yield in_thread(_send, port_of(svc, "p"),
                      UEL + b'@PJL USTATUS JOB=ON\r\n@PJL JOB NAME="J1"\r\n@PJL ENTER LANGUAGE=ZPL\r\n^XA^XZ')
    replies = pjl.split_replies(reply)
    assert replies == [
        b'@PJL USTATUS JOB\r\nSTART\r\nNAME="J1"\r\n\x0c',
        b'@PJL USTATUS JOB\r\nEND\r\nNAME="J1"\r\nPAGES=0\r\nRESULT=OK\r\n\x0c',
    ]


@pytest_twisted.inlineCallbacks
def test_failed_flow_is_an_error_state_reported_on_the_back_channel(make, tmp_path):
    svc = make(printer(flow="fail") + FAIL_FLOW)
    trigger = svc.triggers["p"]
    port = port_of(svc, "p")

    def client():
        s = connect(port)
        s.sendall(b"@PJL USTATUS DEVICE=ON\r\nsome job")
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
        s.close()
        return reply

    reply = yield in_thread(client)
    assert trigger.state.state == "error"
    device = [r for r in pjl.split_replies(reply) if r.startswith(b"@PJL USTATUS DEVICE")]
    assert device[-1].startswith(b"@PJL USTATUS DEVICE\r\nCODE=30000\r\nDISPLAY=\"ERROR: ")
    status = yield in_thread(_send, port, b"@PJL INFO STATUS\r\n")
    assert b"CODE=30000" in status and b"ONLINE=TRUE" in status
    assert trigger.status()["last_error"]


@pytest_twisted.inlineCallbacks
def test_pause_refuses_clients_and_reports_paused(make, jobs_dir):
    svc = make(printer() + archive_flow(jobs_dir))
    trigger = svc.triggers["p"]
    port = port_of(svc, "p")
    yield (trigger.pause())
    assert trigger.state.state == "paused" and not trigger.listening
    with pytest.raises(ConnectionRefusedError):
        yield in_thread(connect, port)
    yield (trigger.resume())
    assert trigger.state.state == "idle" and trigger.listening
    assert (yield in_thread(_send, port, b"@PJL INFO STATUS\r\n")).startswith(b"@PJL INFO STATUS\r\nCODE=10001")


# Example configs -----------------------------------------------------------


@pytest.mark.parametrize("name", ["virtual-printer.toml", "print-proxy.toml"])
def test_example_configs_pass_check_config(name, python):
    if name == "print-proxy.toml" and not os.path.exists(os.path.join(ROOT, "rawsvc", "actions", "send_tcp.py")):
        pytest.skip("rawsvc/actions/send_tcp.py is not written yet")
    result = subprocess.run(
        [python, "-m", "rawsvc", "check-config", os.path.join(ROOT, "etc", name)],
        capture_output=True, cwd=ROOT, timeout=30,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert result.returncode == 0, result.stderr.decode()


def _sleep(seconds):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def test_clients_refused_while_busy_do_not_leak_connection_slots(tmp_path):
    """A client refused by a busy printer after being counted frees its slot on close."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionAborted, ConnectionDone
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from test_connection_unit import HeldSink

    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n'
        '[[trigger]]\nname = "p"\ntype = "printer"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        'busy = "refuse"\nmax_connections = 3\n'
        '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    trigger = loads(text, "unit.toml", BuildContext(reactor=Clock())).triggers["p"]
    trigger.sink = HeldSink()

    def connect(port):
        proto = trigger.build_protocol()
        proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port)))
        return proto

    for round_ in range(4):
        active = connect(1000 + round_)
        racer = connect(2000 + round_)  # arrives while the printer is busy: refused
        assert racer.refused and not active.refused
        racer.connectionLost(Failure(ConnectionAborted()))
        active.connectionLost(Failure(ConnectionDone()))
    assert len(trigger.connections) == 0
    assert trigger.counters.connections_open == 0
