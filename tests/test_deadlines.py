"""The shared deadline heap of stream connections (rawsvc.triggers.deadlines), on task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from rawsvc.triggers.deadlines import COMPACT_AT, Deadlines


class Conn:
    def __init__(self, name: str, log: list, deadlines: Deadlines | None = None, again: float | None = None,
                 fail: bool = False) -> None:
        self.name, self.log, self.deadlines, self.again, self.fail = name, log, deadlines, again, fail
        self.deadline_at = None

    def deadline_reached(self) -> None:
        self.log.append((self.name, self.deadlines.reactor.seconds() if self.deadlines is not None else None))
        if self.fail:
            raise RuntimeError("boom")
        if self.again is not None:
            self.deadlines.schedule(self, self.deadlines.reactor.seconds() + self.again)
            self.again = None


def test_deadlines_fire_in_order_at_their_times_with_one_delayed_call():
    clock, log = Clock(), []
    d = Deadlines(clock)
    a, b, c = Conn("a", log, d), Conn("b", log, d), Conn("c", log, d)
    d.schedule(b, 20)
    d.schedule(a, 10)
    d.schedule(c, 30)
    assert len(clock.getDelayedCalls()) == 1 and clock.getDelayedCalls()[0].getTime() == 10
    clock.advance(9.999)
    assert log == []
    clock.advance(0.001)
    assert log == [("a", 10)]
    clock.advance(20)
    assert log == [("a", 10), ("b", 30), ("c", 30)]
    assert clock.getDelayedCalls() == [] and len(d) == 0


def test_a_later_deadline_waits_for_the_entry_an_earlier_one_pulls_it_forward():
    clock, log = Clock(), []
    d = Deadlines(clock)
    a = Conn("a", log, d)
    d.schedule(a, 10)
    d.schedule(a, 15)  # activity: the entry at 10 stays; its callback re-checks
    assert a.deadline_at == 10 and len(d) == 1
    d.schedule(a, 4)  # a shorter job_timeout: an entry of its own, the call moved
    assert a.deadline_at == 4 and clock.getDelayedCalls()[0].getTime() == 4
    clock.advance(4)
    assert log == [("a", 4)]
    clock.advance(10)
    assert log == [("a", 4)]  # the entry at 10 was stale: the callback ran once
    assert clock.getDelayedCalls() == []


def test_a_callback_that_schedules_again_is_called_again():
    clock, log = Clock(), []
    d = Deadlines(clock)
    a = Conn("a", log, d, again=5)
    d.schedule(a, 1)
    clock.advance(1)
    clock.advance(5)
    assert log == [("a", 1), ("a", 6)]
    assert clock.getDelayedCalls() == []


def test_closing_the_last_connection_leaves_no_delayed_call():
    clock, log = Clock(), []
    d = Deadlines(clock)
    a, b = Conn("a", log, d), Conn("b", log, d)
    d.schedule(a, 10)
    d.schedule(b, 20)
    d.cancel(a)
    assert len(clock.getDelayedCalls()) == 1
    d.cancel(b)
    d.cancel(b)  # twice: nothing more
    assert clock.getDelayedCalls() == [] and len(d) == 0
    clock.advance(100)
    assert log == []
    d.schedule(a, 150)  # and it works again afterwards
    clock.advance(50)
    assert log == [("a", 150)]


def test_closed_connections_are_not_kept_until_their_deadline():
    clock, log = Clock(), []
    d = Deadlines(clock)
    conns = [Conn(str(i), log, d) for i in range(COMPACT_AT * 4)]
    for i, c in enumerate(conns):
        d.schedule(c, 1000 + i)
    keep = conns[::8]
    for c in conns:
        if c not in keep:
            d.cancel(c)
    assert len(d) == len(keep)
    assert len(d._heap) < len(keep) + 2 * COMPACT_AT  # rebuilt without most closed ones
    clock.advance(3000)
    assert [name for name, _ in log] == [c.name for c in keep]


def test_a_failing_callback_is_logged_and_the_others_still_run():
    clock, log, events = Clock(), [], []
    d = Deadlines(clock)
    bad, good = Conn("bad", log, d, fail=True), Conn("good", log, d)
    d.schedule(bad, 5)
    d.schedule(good, 5)
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert log == [("bad", 5), ("good", 5)]
    assert any("deadline check failed" in e.get("log_format", "") for e in events)
    assert clock.getDelayedCalls() == []
