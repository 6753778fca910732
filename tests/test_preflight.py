"""
send_tcp's pre-flight status check (issue 14): the answers it reads, and
real deliveries to a FakePrinter whose conditions a test switches: a
printer that is not ready holds the job (nothing sent), and it is printed,
in order, once the printer is ready.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc.client.address import AllowList, Destination
from rawsvc.client.destinations import DestinationPool
from rawsvc.client.machine import Delivery, State
from rawsvc.client.preflight import READY, Readiness, StatusProtocol, parse_host_status, parse_pjl_status
from rawsvc.client.protocol import SendSettings
from rawsvc.dispatch import Dispatcher
from rawsvc.interfaces import IHoldWatcher
from rawsvc.states import TRANSITIONS, JobState
from rawsvc.testing import FakePrinter, FakeStatus, StubTransport
from rawsvc.triggers.pjl import host_status

# --- reading the answers -------------------------------------------------------------


def test_a_healthy_host_status_is_ready():
    assert parse_host_status(FakeStatus().host_status()) == READY
    assert parse_host_status(host_status()) == READY  # rawsvc's own virtual printer


@pytest.mark.parametrize(
    "conditions, reason",
    [
        ({"paper_out": True}, "paper out"),
        ({"paused": True}, "paused"),
        ({"head_open": True}, "head open"),
        ({"ribbon_out": True}, "ribbon out"),
        ({"paper_out": True, "head_open": True}, "paper out, head open"),
    ],
)
def test_host_status_flags_say_why_the_printer_is_not_ready(conditions, reason):
    assert parse_host_status(FakeStatus(**conditions).host_status()) == Readiness(False, reason)


def test_the_virtual_printers_paper_out_answer_is_not_ready():
    assert parse_host_status(host_status(paper_out=True)) == Readiness(False, "paper out")


def test_an_incomplete_host_status_is_not_ready():
    assert not parse_host_status(b"\x02030,0,0,1245,000,0,0,0,000,0,0,0\x03\r\n").ready


@pytest.mark.parametrize(
    "conditions, ready, reason",
    [
        ({}, True, ""),
        ({"pjl_code": 10006}, True, ""),  # toner low: prints
        ({"pjl_code": 25001}, True, ""),  # a parser error about an earlier job
        ({"offline": True}, False, "offline (OFFLINE)"),
        ({"paper_out": True}, False, "status code 41100 (LOAD PAPER)"),
        ({"head_open": True}, False, "status code 40021 (CLOSE COVER)"),
        ({"pjl_code": 10002}, False, "status code 10002 (10002)"),
    ],
)
def test_pjl_status_codes_and_online(conditions, ready, reason):
    assert parse_pjl_status(FakeStatus(**conditions).pjl_status()) == Readiness(ready, reason)


def test_the_status_protocol_answers_once_the_third_line_arrived():
    from twisted.internet.task import Clock

    clock = Clock()
    proto = StatusProtocol(clock, "zpl", 5.0)
    transport = StubTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"~HS"
    answer = FakeStatus(paper_out=True).host_status()
    proto.dataReceived(answer[:20])
    assert not transport.write_closed
    proto.dataReceived(answer[20:])
    assert transport.write_closed and not transport.disconnecting
    proto.readConnectionLost()  # the printer closes too
    assert transport.disconnecting
    got = []
    proto.finished.addCallback(got.append)
    proto.connectionLost()
    assert got == [Readiness(False, "paper out")]


def test_a_printer_that_does_not_answer_the_status_query_is_not_ready():
    from twisted.internet.task import Clock

    clock = Clock()
    proto = StatusProtocol(clock, "pjl", 5.0)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"\x1b%-12345X@PJL INFO STATUS\r\n\x1b%-12345X"
    got = []
    proto.finished.addCallback(got.append)
    clock.advance(5.0)
    proto.connectionLost()
    assert got == [Readiness(False, "no answer to @PJL INFO STATUS within 5 s")]


# --- the held state ----------------------------------------------------------------


def test_held_is_a_job_state_that_goes_back_to_running():
    assert JobState.HELD in TRANSITIONS[JobState.RUNNING]
    assert {JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.INTERRUPTED} <= TRANSITIONS[JobState.HELD]


def test_a_delivery_is_held_and_checked_again():
    told = []

    @implementer(IHoldWatcher)
    class Watcher:
        def delivery_waiting(self, *args):
            told.append(("waiting", *args))

        def delivery_held(self, *args):
            told.append(("held", *args))

        def delivery_retrying(self, *args):
            told.append(("retrying", *args))

    d = Delivery("j1", "p:9100", [Watcher()], clock=lambda: 100.0)
    d.connect()
    d.hold("paper out", 130.0)
    assert d.state is State.HELD and (d.last_error, d.next_try) == ("paper out", 130.0)
    d.connect()
    assert d.state is State.CONNECTING and d.next_try is None
    assert told == [("held", "j1", "p:9100", 1, "paper out", 130.0), ("retrying", "j1", "p:9100", 2)]


def test_the_dispatcher_is_a_hold_watcher():
    verifyObject(IHoldWatcher, Dispatcher({}))


# --- real deliveries -----------------------------------------------------------------

FAST = SendSettings(preflight="zpl", retry_delay=0.02, max_retry_delay=0.05, preflight_timeout=2.0)


@implementer(IHoldWatcher)
class Recorder:
    def __init__(self):
        self.held: list[tuple[str, str]] = []
        self.waiting: list[str] = []

    def delivery_waiting(self, job_id, destination, attempt, error, next_try):
        self.waiting.append(job_id)

    def delivery_held(self, job_id, destination, attempt, reason, next_try):
        self.held.append((job_id, reason))

    def delivery_retrying(self, job_id, destination, attempt):
        pass


@pytest.fixture
def paper_out_printer():
    p = FakePrinter(status=FakeStatus(paper_out=True))
    p.listen()
    yield p
    pytest_twisted.blockon(p.stop())


def _until(reactor, check, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout

    @pytest_twisted.inlineCallbacks
    def wait():
        while not check():
            assert time.monotonic() < deadline, "timed out"
            yield deferLater(reactor, 0.01, lambda: None)

    return wait()


@pytest_twisted.inlineCallbacks
def test_paper_out_holds_jobs_until_cleared_then_prints_them_in_order(reactor, paper_out_printer):
    printer = paper_out_printer
    watcher = Recorder()
    pool = DestinationPool(reactor, AllowList.allow_all(), [watcher])
    pool.startService()
    dest = Destination.parse(printer.destination)
    jobs = [b"^XA^FDlabel %d^FS^XZ" % i for i in range(5)]
    results = [pool.deliver(dest, data, FAST, f"j{i}") for i, data in enumerate(jobs)]
    yield _until(reactor, lambda: len(watcher.held) >= 3)
    status = pool.status()[printer.destination]
    assert (status["state"], status["held"], status["held_reason"]) == ("held", 1, "paper out")
    assert status["queued"] == 4
    assert printer.printed == []  # never printed into an error
    assert {job_id for job_id, _ in watcher.held} == {"j0"}  # the first job is held, the others wait behind it
    printer.status.paper_out = False
    done = yield gatherResults(results)
    assert [r.outcome for r in done] == ["delivered"] * 5
    assert printer.printed == jobs  # each once, in order
    assert printer.max_active == 1  # the status connection and the job's never overlap
    assert all(j.queries == ["~HS"] for j in printer.jobs if not j.data)
    yield pool.stopService()


@pytest_twisted.inlineCallbacks
def test_a_pjl_preflight_holds_an_offline_printer(reactor):
    printer = FakePrinter(status=FakeStatus(offline=True))
    printer.listen()
    watcher = Recorder()
    pool = DestinationPool(reactor, AllowList.allow_all(), [watcher])
    pool.startService()
    try:
        d = pool.deliver(Destination.parse(printer.destination), b"@PJL JOB\r\nx", attrs_evolve(FAST, preflight="pjl"), "p1")
        yield _until(reactor, lambda: watcher.held)
        assert watcher.held[0] == ("p1", "offline (OFFLINE)")
        printer.status.offline = False
        result = yield d
        assert result.ok and printer.printed == [b"@PJL JOB\r\nx"]
    finally:
        yield pool.stopService()
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_stopping_while_held_ends_the_delivery_stopped_so_it_resumes(reactor, paper_out_printer):
    watcher = Recorder()
    pool = DestinationPool(reactor, AllowList.allow_all(), [watcher])
    pool.startService()
    d = pool.deliver(Destination.parse(paper_out_printer.destination), b"x", FAST, "s1")
    yield _until(reactor, lambda: watcher.held)
    yield pool.stopService()
    result = yield d
    assert result.outcome == "stopped" and paper_out_printer.printed == []


def attrs_evolve(settings, **changes):
    import attrs

    return attrs.evolve(settings, **changes)


# --- through a real service with its spool -----------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_held_job_shows_in_jobs_metrics_and_the_spool_then_prints(reactor, tmp_path, paper_out_printer):
    from rawsvc.admin.namespace import recent_jobs
    from rawsvc.admin.prometheus import render
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService
    from rawsvc.testing import send_job

    printer = paper_out_printer
    text = f"""
[service]
state_dir = "{tmp_path}/state"
spool = true
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
[[flow]]
name = "f"
actions = [ {{ type = "send_tcp", destination = "{printer.destination}", preflight = "zpl", retry_delay = 0.05, max_retry_delay = 0.1 }} ]
"""
    service = RawService(loads(text, str(tmp_path / "c.toml"), BuildContext()))
    service.startService()
    try:
        port = service.triggers["t"].port.getHost().port
        sent = send_job(reactor, f"tcp:127.0.0.1:{port}", b"^XA^FDheld^FS^XZ", timeout=30)  # answered once done
        yield _until(reactor, lambda: [j["state"] for j in recent_jobs(service)] == ["held"])
        job_id = recent_jobs(service)[0]["job_id"]
        assert service.sink.waiting_deliveries()[job_id]["held"] == "paper out"
        assert f'rawsvc_destination_held{{destination="{printer.destination}"}} 1' in render(service)
        stored = []

        @pytest_twisted.inlineCallbacks
        def spool_state():
            yield service.sink.store.flush()
            rows = yield service.sink.store.load(job_id=job_id)
            stored[:] = [(r.state, r.last_error) for r in rows]

        yield spool_state()
        assert stored == [("held", "paper out")]
        # Checked again every 0.1 s, the job is running for a moment at each check: asked a few times.
        lines = []
        for _ in range(10):
            listing = yield deferToThread(
                subprocess.run, [sys.executable, "-m", "rawsvc", "jobs", "--state-dir", f"{tmp_path}/state"],
                capture_output=True, text=True, timeout=60)
            lines.append(next((x for x in listing.stdout.splitlines() if x.startswith(job_id)),
                              listing.stdout + listing.stderr))
            if " held " in lines[-1]:
                break
        line = lines[-1]
        assert " held " in line and "next check " in line and line.endswith(": paper out"), lines
        assert printer.printed == []
        printer.status.paper_out = False
        yield _until(reactor, lambda: [j["state"] for j in recent_jobs(service)] == ["done"])
        assert printer.printed == [b"^XA^FDheld^FS^XZ"]
        assert service.sink.recent()[0].variables["printed_on"] == printer.destination
        yield sent
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_job_held_when_the_service_stops_is_printed_after_the_restart(reactor, tmp_path, paper_out_printer):
    from rawsvc.admin.namespace import recent_jobs
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService
    from rawsvc.testing import send_job

    printer = paper_out_printer
    text = f"""
[service]
state_dir = "{tmp_path}/state"
spool = true
stop_grace = 1
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
[[flow]]
name = "f"
actions = [ {{ type = "send_tcp", destination = "{printer.destination}", preflight = "zpl", retry_delay = 0.05, max_retry_delay = 0.1 }} ]
"""
    first = RawService(loads(text, str(tmp_path / "c.toml"), BuildContext()))
    first.startService()
    port = first.triggers["t"].port.getHost().port
    sent = send_job(reactor, f"tcp:127.0.0.1:{port}", b"^XA^FDkept^FS^XZ", timeout=30)
    sent.addErrback(lambda f: None)  # the sender is cut off by the stop
    yield _until(reactor, lambda: [j["state"] for j in recent_jobs(first)] == ["held"])
    yield first.stopService()
    assert printer.printed == []
    printer.status.paper_out = False
    second = RawService(loads(text, str(tmp_path / "c.toml"), BuildContext()))
    second.startService()
    try:
        yield _until(reactor, lambda: printer.printed == [b"^XA^FDkept^FS^XZ"])
        yield _until(reactor, lambda: [j["state"] for j in recent_jobs(second)] == ["done"])
        assert printer.printed == [b"^XA^FDkept^FS^XZ"]  # once
    finally:
        yield second.stopService()
        yield sent
