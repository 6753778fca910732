"""
Printer pools (issue 14): a send_tcp destination that names several
printers; which one a job goes to, cool-downs, jobs moving off a printer
that went away, and every job printed exactly once.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from rawsvc.client.address import AllowList, Destination
from rawsvc.client.destinations import DestinationPool
from rawsvc.client.pools import PrinterPool
from rawsvc.client.protocol import SendSettings
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.job import Job, Payload
from rawsvc.testing import FakePrinter, FakeStatus

A, B, C = (Destination.parse(f"10.0.0.{i}:9100") for i in (1, 2, 3))


def _none(key: str) -> float:
    return 0.0


def _zero(key: str) -> int:
    return 0


# --- choosing a printer ------------------------------------------------------------


def test_failover_takes_the_first_printer_that_is_not_cooling_down():
    pool = PrinterPool([A, B, C])
    assert pool.order(_none, _zero) == [A, B, C]
    cooling = {str(A): 50.0, str(B): 40.0}
    assert pool.order(lambda k: cooling.get(k, 0.0), _zero) == [C, B, A]  # cooling ones last, soonest back first


def test_round_robin_goes_round_and_skips_a_printer_cooling_down():
    pool = PrinterPool([A, B, C], "round_robin")
    assert [pool.order(_none, _zero)[0] for _ in range(4)] == [A, B, C, A]
    cooling = {str(B): 99.0}
    assert [pool.order(lambda k: cooling.get(k, 0.0), _zero)[0] for _ in range(3)] == [C, A, C]


def test_least_queued_takes_the_shortest_queue_ties_in_order():
    pool = PrinterPool([A, B, C], "least_queued")
    depth = {str(A): 3, str(B): 1, str(C): 1}
    assert pool.order(_none, lambda k: depth[k]) == [B, C, A]


# --- the config ----------------------------------------------------------------------


def _config(tmp_path, action: str, service: str = ""):
    text = f'[service]\nstate_dir = "{tmp_path}/state"\n{service}\n[[flow]]\nname = "f"\nactions = [ {action} ]\n'
    return loads(text, context=BuildContext())


def test_allowed_destinations_applies_to_each_printer_of_a_pool(tmp_path):
    with pytest.raises(ConfigError, match="10.0.0.6:9100 is not in \\[service\\] allowed_destinations"):
        _config(tmp_path, '{ type = "send_tcp", destination = ["10.0.0.5:9100", "10.0.0.6:9100"] }',
                'allowed_destinations = ["10.0.0.5:9100"]')


def test_a_pool_policy_must_be_one_of_the_three(tmp_path):
    with pytest.raises(ConfigError, match="policy"):
        _config(tmp_path, '{ type = "send_tcp", destination = ["10.0.0.5:9100"], policy = "random" }')


def test_an_empty_pool_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="at least one"):
        _config(tmp_path, '{ type = "send_tcp", destination = [] }')


# --- real printers -------------------------------------------------------------------

FAST = SendSettings(retry_delay=0.02, max_retry_delay=0.05, connect_timeout=2.0)


def _until(reactor, check, timeout=15.0):
    deadline = time.monotonic() + timeout

    @pytest_twisted.inlineCallbacks
    def wait():
        while not check():
            assert time.monotonic() < deadline, "timed out"
            yield deferLater(reactor, 0.01, lambda: None)

    return wait()


@pytest.fixture
def printers():
    ps = [FakePrinter() for _ in range(3)]
    for p in ps:
        p.listen()
    yield ps
    for p in ps:
        pytest_twisted.blockon(p.stop())


@pytest_twisted.inlineCallbacks
def test_a_pool_of_three_with_one_switched_off_mid_run_prints_every_job_exactly_once(reactor, printers):
    pool = DestinationPool(reactor, AllowList.allow_all())
    pool.startService()
    members = PrinterPool([Destination.parse(p.destination) for p in printers], "round_robin", cooldown=60)
    jobs = [b"job %03d " % i + os.urandom(200) for i in range(60)]
    first = [pool.deliver_pool(members, data, FAST, f"j{i}") for i, data in enumerate(jobs[:30])]
    off = printers[1]
    yield _until(reactor, lambda: len(off.printed) >= 3)
    yield off.switch_off()  # mid-run: jobs are queued for it
    rest = [pool.deliver_pool(members, data, FAST, f"j{i}") for i, data in enumerate(jobs[30:], 30)]
    results = yield gatherResults(first + rest)
    assert [r.outcome for r in results] == ["delivered"] * 60
    printed = [data for p in printers for data in p.printed]
    assert len(printed) == len(jobs) and sorted(printed) == sorted(jobs)  # every job once, no duplicates
    assert len(off.printed) < 20  # its queued jobs moved to the others
    for p in printers:
        assert p.max_active == 1
    by_printer = {p.destination: set(p.printed) for p in printers}
    assert all(data in by_printer[r.destination] for r, data in zip(results, jobs))  # the result names the printer
    yield pool.stopService()


@pytest_twisted.inlineCallbacks
def test_failover_skips_a_printer_that_fails_preflight_and_records_printed_on(reactor, tmp_path, printers):
    out, ok, _ = printers
    out.status = FakeStatus(paper_out=True)
    ok.status = FakeStatus()
    text = f"""
[service]
state_dir = "{tmp_path}/state"
[[flow]]
name = "f"
actions = [ {{ type = "send_tcp", destination = ["{out.destination}", "{ok.destination}"], preflight = "zpl", retry_delay = 0.02, max_retry_delay = 0.05 }} ]
"""
    config = loads(text, context=BuildContext(reactor=reactor))
    config.context.destinations.startService()
    try:
        done = yield gatherResults([config.flows["f"].run(Job("t", Payload(b"^XA%d^XZ" % i))) for i in range(4)])
        assert [j.state for j in done] == ["done"] * 4
        assert {j.variables["printed_on"] for j in done} == {ok.destination}
        assert out.printed == [] and sorted(ok.printed) == sorted(b"^XA%d^XZ" % i for i in range(4))
        assert config.context.destinations.cooling_until(out.destination) > 0
    finally:
        yield config.context.destinations.stopService()


@pytest_twisted.inlineCallbacks
def test_when_every_printer_is_down_the_job_waits_and_goes_to_the_first_that_is_back(reactor):
    a, b = FakePrinter(), FakePrinter()
    a.refuse()
    b.refuse()
    pool = DestinationPool(reactor, AllowList.allow_all())
    pool.startService()
    try:
        members = PrinterPool([Destination.parse(a.destination), Destination.parse(b.destination)], cooldown=0.05)
        d = pool.deliver_pool(members, b"only once", FAST, "w1")
        yield _until(reactor, lambda: any(s["state"] == "waiting" for s in pool.status().values()))
        b.accept()
        result = yield d
        assert result.ok and result.destination == b.destination
        assert b.printed == [b"only once"] and a.printed == []
    finally:
        yield pool.stopService()
        yield a.stop()
        yield b.stop()
