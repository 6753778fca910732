"""Trigger appsocket-status: the UDP status port reports the printer's state of the moment."""

from __future__ import annotations

import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from conftest import require_tool
from printer_support import (
    FAIL_FLOW,
    GateAction,
    archive_flow,
    printer,
    status_trigger,
    udp_port,
    udp_query,
    wait_for,
)
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.interfaces import ITrigger
from rawsvc.triggers.appsocket import STATUS_KEYS, TokenBuckets, parse_status
from support import port_of, recv_all


@pytest.fixture
def make(service_factory):
    yield service_factory
    GateAction.open_all()  # before service_factory stops the services


def query(svc, payload=b""):
    return deferToThread(udp_query, udp_port(svc), payload)


def state_of(svc):
    return query(svc).addCallback(lambda data: parse_status(data)["STATE"])


@pytest_twisted.inlineCallbacks
def test_idle_printer_answers_with_every_key_in_order(make, tmp_path):
    svc = make(printer() + status_trigger() + archive_flow(tmp_path / "jobs"))
    data = yield query(svc)
    lines = data.decode().splitlines()
    assert [line.split("=", 1)[0] for line in lines] == list(STATUS_KEYS)
    assert lines[0] == "STATE=idle" and "PRINTER=p" in lines and data.endswith(b"\n")
    assert verifyObject(ITrigger, svc.triggers["p-status"])


@pytest_twisted.inlineCallbacks
def test_crlf_query_is_answered_and_anything_else_ignored(make, tmp_path):
    svc = make(printer() + status_trigger() + archive_flow(tmp_path / "jobs"))
    assert (yield query(svc, b"\r\n")).startswith(b"STATE=idle\n")
    assert (yield deferToThread(udp_query, udp_port(svc), b"status?", 0.3)) is None
    assert svc.triggers["p-status"].ignored == 1


@pytest_twisted.inlineCallbacks
def test_socat_query_reports_the_state(make, tmp_path):
    socat = require_tool("socat")
    svc = make(printer() + status_trigger() + archive_flow(tmp_path / "jobs"))
    result = yield deferToThread(
        subprocess.run, [socat, "-t", "0.5", "-", f"UDP:127.0.0.1:{udp_port(svc)}"],
        input=b"\n", capture_output=True, timeout=10,
    )
    assert result.stdout.startswith(b"STATE=idle\nPRINTER=p\n")


@pytest_twisted.inlineCallbacks
def test_state_follows_the_job_receiving_processing_idle(make, tmp_path):
    svc = make(printer() + status_trigger() + archive_flow(tmp_path / "jobs", gate=True))
    port = port_of(svc, "p")
    client = yield deferToThread(socket.create_connection, ("127.0.0.1", port), 5)
    try:
        yield deferToThread(client.sendall, b'@PJL JOB NAME="lbl"\r\n@PJL ENTER LANGUAGE=ZPL\r\n^XA')
        yield wait_for(lambda: svc.triggers["p"].state.state == "receiving")
        status = parse_status((yield query(svc)))
        assert status["STATE"] == "receiving" and status["CLIENT"].startswith("127.0.0.1:")
        yield deferToThread(client.shutdown, socket.SHUT_WR)
        yield wait_for(lambda: GateAction.gates)
        status = parse_status((yield query(svc)))
        assert status["STATE"] == "processing" and status["JOB"] and status["JOB_NAME"] == "lbl"
        GateAction.open_all()
        assert (yield deferToThread(recv_all, client)) == b""
    finally:
        client.close()
    yield wait_for(lambda: svc.triggers["p"].state.state == "idle")
    status = parse_status((yield query(svc)))
    assert status["STATE"] == "idle" and status["JOBS_OK"] == "1" and status["JOB"] == ""


@pytest_twisted.inlineCallbacks
def test_paused_printer_reports_paused(make, tmp_path):
    svc = make(printer() + status_trigger() + archive_flow(tmp_path / "jobs"))
    yield svc.triggers["p"].pause()
    assert (yield state_of(svc)) == "paused"
    yield svc.triggers["p"].resume()
    assert (yield state_of(svc)) == "idle"


@pytest_twisted.inlineCallbacks
def test_failed_flow_reports_error_and_last_error(make, tmp_path):
    svc = make(printer(flow="fail") + status_trigger() + FAIL_FLOW)
    port = port_of(svc, "p")

    def send():
        s = socket.create_connection(("127.0.0.1", port), 5)
        s.sendall(b"not a match")
        s.shutdown(socket.SHUT_WR)
        recv_all(s)
        s.close()

    yield deferToThread(send)
    yield wait_for(lambda: svc.triggers["p"].state.state == "error")
    status = parse_status((yield query(svc)))
    assert status["STATE"] == "error" and status["JOBS_FAILED"] == "1" and status["LAST_ERROR"]


@pytest_twisted.inlineCallbacks
def test_replies_are_rate_limited_per_source(make, tmp_path):
    svc = make(printer() + status_trigger(rate_limit=2) + archive_flow(tmp_path / "jobs"))

    def burst():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            for _ in range(10):
                s.sendto(b"", ("127.0.0.1", udp_port(svc)))
            got = 0
            try:
                while True:
                    s.recv(4096)
                    got += 1
            except socket.timeout:
                return got

    assert (yield deferToThread(burst)) == 2


def test_token_buckets_refill_over_time():
    now = [0.0]
    buckets = TokenBuckets(rate=2, total=3, clock=lambda: now[0])
    assert [buckets.allow("a") for _ in range(3)] == [True, True, False]
    assert buckets.allow("b") is True and buckets.allow("c") is False  # total of 3 spent
    now[0] = 1.0
    assert buckets.allow("a") and buckets.allow("c")


@pytest.mark.parametrize("target,message", [
    ("nope", "names trigger 'nope', which is not defined"),
    ("t", "it must name a trigger of type \"printer\""),
])
def test_printer_key_must_name_a_printer_trigger(target, message, tmp_path):
    toml = (
        '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        + status_trigger(printer_name=target)
        + '[[flow]]\nname = "f"\nactions = [ { type = "log", message = "x" } ]\n'
    )
    with pytest.raises(ConfigError) as e:
        loads(toml, "x.toml", BuildContext(state_dir=str(tmp_path)))
    assert any("key 'printer'" in line and message in line for line in e.value.errors)


def test_listen_must_be_a_udp_endpoint(tmp_path):
    toml = printer() + status_trigger(listen="tcp:9101") + archive_flow(tmp_path / "j")
    with pytest.raises(ConfigError) as e:
        loads(toml, "x.toml", BuildContext(state_dir=str(tmp_path)))
    assert any("key 'listen'" in line and "UDP" in line for line in e.value.errors)


# The datagram comes from the printer's snapshot only (IPrinterStatus) ----------


def test_the_datagram_is_the_snapshot_s_fields_one_per_line():
    from rawsvc.triggers.appsocket import format_status
    from rawsvc.triggers.printer_state import PrinterSnapshot

    snap = PrinterSnapshot(state="error", printer="zebra1", job_id="J7", job_name="label\r\n7", client="10.0.0.9:5120",
                           queued=2, jobs_ok=40, jobs_failed=3, last_error="printer 10.0.0.5:9100 refused")
    assert format_status(snap) == (
        b"STATE=error\nPRINTER=zebra1\nJOB=J7\nJOB_NAME=label  7\nCLIENT=10.0.0.9:5120\nQUEUED=2\n"
        b"JOBS_OK=40\nJOBS_FAILED=3\nLAST_ERROR=printer 10.0.0.5:9100 refused\n"
    )


def test_the_printer_provides_iprinterstatus_and_its_snapshot_tells_the_job_in_hand(tmp_path):
    import attrs

    from rawsvc.interfaces import IPrinterStatus
    from rawsvc.testing import connect, load_trigger
    from rawsvc.triggers.pjl import UEL

    trigger = load_trigger("printer", tmp_path)
    assert verifyObject(IPrinterStatus, trigger)
    first, _ = connect(trigger, port=5001)
    connect(trigger, port=5002)  # waits in the queue
    first.dataReceived(UEL + b'@PJL JOB NAME="order 12"\r\n^XA^XZ' + UEL + b"@PJL EOJ\r\n" + UEL)
    snap = trigger.snapshot()
    job = trigger.sink.jobs[0].job
    assert (snap.state, snap.printer, snap.job_id, snap.job_name, snap.client, snap.queued) == (
        "processing", "t", job.job_id, "order 12", "127.0.0.1:5001", 1)
    trigger.sink.finish(0, state="failed", error="no paper")
    snap = trigger.snapshot()
    assert (snap.state, snap.job_id, snap.jobs_failed, snap.last_error) == ("error", "", 1, "no paper")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snap.state = "idle"
