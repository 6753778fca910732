"""
Destinations: parsing, allowed_destinations matching, and the pool that
gives each destination one connection at a time.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from rawsvc.client.address import AddressError, AllowEntry, AllowList, Destination
from rawsvc.client.destinations import DestinationPool
from rawsvc.client.machine import Delivery, InvalidTransition, State
from rawsvc.client.protocol import SendProtocol, SendSettings
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job, Payload
from rawsvc.testing import FakePrinter

# --- parsing and matching --------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("127.0.0.1:9100", "127.0.0.1:9100"),
        ("Printer.Example.com:9100", "printer.example.com:9100"),
        ("[::1]:9100", "[::1]:9100"),
        (" localhost:1 ", "localhost:1"),
    ],
)
def test_destination_parses_to_a_canonical_key(text, key):
    assert str(Destination.parse(text)) == key


@pytest.mark.parametrize(
    "text, message",
    [
        ("printer", "has no port"),
        ("printer:", "port '' is not a number"),
        ("printer:0", "out of range"),
        ("::1:9100", "in brackets"),
        ("[printer]:9100", "is not an IPv6 address"),
        ("bad host!:9100", "is not a host name"),
    ],
)
def test_bad_destinations_say_why(text, message):
    with pytest.raises(AddressError, match=message):
        Destination.parse(text)


def test_allow_entries_take_names_wildcards_cidrs_and_port_ranges():
    allow = AllowList.parse(
        ["127.0.0.1:9100-9199", "printers.example.com:9100", "*.labels.example.com", "10.0.0.0/8:9100", "[fd00::/8]:9100"]
    )
    d = Destination.parse
    assert allow.allows_name(d("127.0.0.1:9150"))
    assert not allow.allows_name(d("127.0.0.1:9200"))
    assert allow.allows_name(d("PRINTERS.example.com:9100"))
    assert not allow.allows_name(d("printers.example.com:9101"))
    assert allow.allows_name(d("zebra1.labels.example.com:6101"))
    assert not allow.allows_name(d("labels.example.com.evil.org:9100"))
    assert allow.allows_name(d("10.20.30.40:9100"))
    assert allow.allows_name(d("[fd12::5]:9100"))
    assert not allow.allows_name(d("[::1]:9100"))


def test_a_host_name_is_allowed_only_at_addresses_the_list_allows():
    allow = AllowList.parse(["10.0.0.0/8:9100"])
    dest = Destination.parse("printer.lan:9100")
    assert allow.may_allow(dest)
    assert allow.filter(dest, ["192.168.1.5", "10.1.1.1"]) == ["10.1.1.1"]
    assert allow.filter(dest, ["192.168.1.5"]) == []


def test_default_list_is_literals_and_loopback():
    allow = AllowList.default([Destination.parse("printer.lan:9100"), Destination.parse("192.0.2.1:6101")])
    d = Destination.parse
    assert allow.allows_name(d("printer.lan:9100"))
    assert allow.allows_name(d("192.0.2.1:6101"))
    assert not allow.allows_name(d("192.0.2.1:6102"))
    assert allow.allows_name(d("127.0.0.5:1234")) and allow.allows_name(d("[::1]:80"))
    assert allow.filter(d("localhost:9100"), ["127.0.0.1", "::1"]) == ["127.0.0.1", "::1"]
    assert not allow.may_allow(d("192.0.2.99:9100"))


@pytest.mark.parametrize("entry", ["", "10.0.0.0/40", "host:0", "host:1-", "[::1", "[::1]:", "a b", "host:x"])
def test_bad_allow_entries_are_rejected(entry):
    with pytest.raises(AddressError):
        AllowEntry.parse(entry)


# --- the state machine ----------------------------------------------------------


class HalfCloseTransport(StringTransport):
    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


def test_delivery_states_follow_the_table():
    from twisted.internet.task import Clock

    machine = Delivery()
    assert machine.state is State.QUEUED
    machine.connect()
    assert machine.state is State.CONNECTING
    proto = SendProtocol(Clock(), b"job", SendSettings(disconnect_delay=1.0), machine)
    transport = HalfCloseTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"job" and transport.write_closed
    assert machine.state is State.DRAINING
    with pytest.raises(InvalidTransition):
        machine.connected()
    assert machine.state is State.DRAINING  # a refused input changes nothing


def test_eof_from_the_printer_ends_draining_at_once():
    from twisted.internet.task import Clock

    clock = Clock()
    machine = Delivery()
    machine.connect()
    proto = SendProtocol(clock, b"job", SendSettings(wait_for_eof=True, eof_timeout=5), machine)
    transport = HalfCloseTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"OK")
    proto.readConnectionLost()
    assert transport.disconnecting
    results = []
    proto.finished.addCallback(results.append)
    proto.connectionLost()
    assert results[0].ending.value == "eof" and results[0].reply == b"OK"
    assert clock.getDelayedCalls() == []


def test_action_provides_its_interfaces(tmp_path):
    config = loads('[[flow]]\nname = "f"\nactions = [ { type = "send_tcp", destination = "127.0.0.1:9100" } ]\n')
    action = config.flows["f"].actions[0]
    verifyObject(IAction, action)
    verifyObject(IActionType, type(action))


# --- the pool ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_two_flows_never_overlap_on_one_destination_while_another_is_served(reactor, tmp_path):
    busy = FakePrinter(reply=b"OK")
    other = FakePrinter()
    busy.listen()
    other.listen()
    try:
        config = loads(
            f"""
[service]
state_dir = "{tmp_path}"
[[flow]]
name = "a"
actions = [ {{ type = "send_tcp", destination = "{busy.destination}", wait_for_eof = true, save_reply = "r" }} ]
[[flow]]
name = "b"
actions = [ {{ type = "send_tcp", destination = "{busy.destination}", wait_for_eof = true }} ]
[[flow]]
name = "c"
actions = [ {{ type = "send_tcp", destination = "{other.destination}", wait_for_eof = true }} ]
""",
            context=BuildContext(reactor=reactor),
        )
        sent = set()
        runs = []
        for i in range(50):
            for flow in ("a", "b"):
                data = f"{flow}-{i}:".encode() + os.urandom(1000 + 97 * i)
                sent.add(data)
                runs.append(config.flows[flow].run(Job(flow, Payload(data))))
        side = [config.flows["c"].run(Job("c", Payload(b"other %d" % i))) for i in range(5)]
        side_jobs = yield gatherResults(side)
        assert all(j.state == "done" for j in side_jobs)
        assert busy.active <= 1 and len([j for j in busy.jobs if j.closed]) < 100  # served meanwhile
        jobs = yield gatherResults(runs)
        assert [j.error for j in jobs if j.state != "done"] == []
        yield busy.wait_for(100)
        assert len(busy.jobs) == 100 and busy.max_active == 1
        ordered = sorted(busy.jobs, key=lambda j: j.opened)
        assert all(b.opened >= a.closed for a, b in zip(ordered, ordered[1:]))
        assert {j.bytes for j in busy.jobs} == sent
        status = config.context.destinations.status()
        assert status[busy.destination]["delivered"] == 100
        assert status[busy.destination]["queued"] == 0 and status[busy.destination]["state"] == "idle"
        assert status[other.destination]["delivered"] == 5
    finally:
        yield busy.stop()
        yield other.stop()


def test_status_has_the_documented_fields():
    from rawsvc.client.queues import DestinationQueue

    assert {"attempts", "delivered", "failures", "retries", "queued", "state"} <= set(DestinationQueue("h:1").status())


@pytest_twisted.inlineCallbacks
def test_stopping_the_pool_fails_waiting_jobs_and_cancels_retries(reactor):
    printer = FakePrinter()
    printer.refuse()
    pool = DestinationPool(reactor, AllowList.allow_all())
    pool.startService()
    try:
        settings = SendSettings(retries=5, retry_delay=30)
        dest = Destination.parse(printer.destination)
        first = pool.deliver(dest, b"1", settings, "j1")
        second = pool.deliver(dest, b"2", settings, "j2")
        from twisted.internet.task import deferLater

        while pool.status()[printer.destination]["state"] != "waiting":
            yield deferLater(reactor, 0.005, lambda: None)
        assert pool.status()[printer.destination]["queued"] == 1
        yield pool.stopService()
        r1, r2 = yield gatherResults([first, second])
        assert r1.outcome == "stopped" and "connection refused" in r1.message
        assert r2.outcome == "stopped"
        late = yield pool.deliver(dest, b"3", settings)
        assert late.outcome == "stopped"
    finally:
        yield printer.stop()


@pytest_twisted.inlineCallbacks
def test_cancelling_a_delivery_waiting_its_turn_does_not_stall_the_queue(reactor):
    """A job cancelled in the queue gives its place up; the next job is served."""
    from twisted.internet.defer import CancelledError

    from rawsvc.client.address import Destination
    from rawsvc.client.destinations import DestinationPool
    from rawsvc.client.protocol import SendSettings
    from rawsvc.testing import FakePrinter

    printer = FakePrinter()
    printer.listen()
    pool = DestinationPool(reactor)
    pool.startService()
    try:
        dest = Destination.parse(f"127.0.0.1:{printer.port}")
        settings = SendSettings(retries=0)
        first = pool.deliver(dest, b"one", settings, "j1")
        second = pool.deliver(dest, b"two", settings, "j2")
        third = pool.deliver(dest, b"three", settings, "j3")
        second.cancel()
        with pytest.raises(CancelledError):
            yield second
        results = [(yield first), (yield third)]
        assert [r.ok for r in results] == [True, True]
        yield printer.wait_for(2)
        assert [j.bytes for j in printer.jobs] == [b"one", b"three"]
    finally:
        yield pool.stopService()
        yield printer.stop()


def test_a_pause_spelled_differently_pauses_the_live_queue_and_one_of_nothing_is_forgotten_on_resume():
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    pool = DestinationPool(clock, AllowList.allow_all())
    pool.startService()
    dest = Destination.parse("127.0.0.1:9100")
    results: list = []
    pool.deliver_here(dest, b"one", SendSettings(retries=0), "j1").addCallback(results.append)
    pool.deliver_here(dest, b"two", SendSettings(retries=0), "j2").addCallback(results.append)
    clock.advance(0)
    live = pool._queues["127.0.0.1:9100"]
    assert live.current is not None and len(live.turns) == 1
    assert pool.pause("127.0.0.1:09100", "op")
    assert not pool.pause(" 127.0.0.1:9100", "op")  # the same destination: paused already
    assert pool._queues == {"127.0.0.1:9100": live}
    assert pool.status()["127.0.0.1:9100"]["paused"] and pool.status()["127.0.0.1:9100"]["queued"] == 1
    assert pool.resume("127.0.0.1:09100") and pool._queues == {"127.0.0.1:9100": live}
    # A destination nothing was sent to: the pause keeps a queue, its resume forgets it again.
    assert pool.pause("LOCALHOST:9101", "op") and not pool.pause("localhost:9101", "op")
    assert pool.status()["localhost:9101"]["paused"]
    assert pool.resume("Localhost:9101")
    assert set(pool.status()) == {"127.0.0.1:9100"}
    assert not pool.resume("127.0.0.1:9999") and set(pool.status()) == {"127.0.0.1:9100"}
    with pytest.raises(AddressError):
        pool.pause("127.0.0.1", "op")
    pool.stopService()
    clock.advance(0)


def test_two_thousand_destination_queues_cost_little_memory():
    """A queue's jobs-per-minute ring is a few compact counters, not a day of per-minute lists."""
    import time
    import tracemalloc

    from rawsvc.client.queues import DestinationQueue

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        queues = [DestinationQueue(f"10.0.{i // 250}.{i % 250}:9100") for i in range(2000)]
        for q in queues:
            q.rate.add(True, time.time())
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 8_000_000, used  # a day of per-minute lists each: ~100 MB
    assert queues[0].status()["jobs_per_minute"] == 0.2
