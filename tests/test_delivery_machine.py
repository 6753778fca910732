"""
A delivery's state machine (L{rawsvc.client.machine.Delivery}) and the
destination queue around it: the table, its outputs (watchers told), the
status that reads the machine, and the per-destination L{DeferredLock}
(order kept, a waiter cancelled through the lock's canceller).  Logic only:
a L{MemoryReactorClock} stands in for the network and the clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc.client.address import AllowList, Destination
from rawsvc.client.destinations import DestinationPool
from rawsvc.client.machine import Delivery, InvalidTransition, State, transition_text
from rawsvc.client.protocol import SendSettings
from rawsvc.client.queues import DestinationQueue
from rawsvc.client.retry import RetryPolicy
from rawsvc.interfaces import IDeliveryWatcher

DEST = Destination.parse("127.0.0.1:9100")


@implementer(IDeliveryWatcher)
class Watcher:
    def __init__(self) -> None:
        self.told: list[tuple] = []

    def delivery_waiting(self, job_id, destination, attempt, error, next_try):
        self.told.append(("waiting", job_id, destination, attempt, error, next_try))

    def delivery_retrying(self, job_id, destination, attempt):
        self.told.append(("retrying", job_id, destination, attempt))


# --- the table --------------------------------------------------------------------

#: Inputs (with their arguments) that reach each state from a new delivery.
PATHS = {
    State.QUEUED: [],
    State.CONNECTING: [("connect",)],
    State.SENDING: [("connect",), ("connected",)],
    State.DRAINING: [("connect",), ("connected",), ("written",)],
    State.WAITING: [("connect",), ("wait", "refused", 5.0)],
    State.HELD: [("connect",), ("hold", "paper out", 5.0)],
    State.DONE: [("finish",)],
}
INPUTS = {"connect": (), "connected": (), "written": (), "wait": ("e", 1.0), "hold": ("r", 1.0), "finish": ()}
ALLOWED = {
    State.QUEUED: {"connect", "finish"},
    State.CONNECTING: {"connected", "wait", "hold", "finish"},
    State.SENDING: {"written", "wait", "finish"},
    State.DRAINING: {"wait", "finish"},
    State.WAITING: {"connect", "finish"},
    State.HELD: {"connect", "finish"},
    State.DONE: set(),
}


def reach(state: State, **kw) -> Delivery:
    d = Delivery(**kw)
    for name, *args in PATHS[state]:
        getattr(d, name)(*args)
    assert d.state is state
    return d


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_an_input_outside_the_table_raises_and_changes_nothing(state, name):
    d = reach(state)
    if name in ALLOWED[state]:
        getattr(d, name)(*INPUTS[name])
        return
    with pytest.raises(InvalidTransition) as caught:
        getattr(d, name)(*INPUTS[name])
    assert d.state is state
    assert transition_text(caught.value) == f"a delivery that is {state.value} cannot take the input {name!r} (a bug)"


def test_a_delivery_with_a_retry_goes_through_every_state_and_counts_its_attempts():
    times = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    d = Delivery("j1", "h:1", clock=lambda: next(times))
    seen = [(d.state, d.attempt, d.since)]
    for name, *args in [("connect",), ("wait", "refused", 99.0), ("connect",), ("connected",), ("written",), ("finish",)]:
        getattr(d, name)(*args)
        seen.append((d.state, d.attempt, d.since))
    assert seen == [
        (State.QUEUED, 0, 1.0),
        (State.CONNECTING, 1, 2.0),
        (State.WAITING, 1, 3.0),
        (State.CONNECTING, 2, 4.0),
        (State.SENDING, 2, 5.0),
        (State.DRAINING, 2, 6.0),
        (State.DONE, 2, 7.0),
    ]


def test_waiting_remembers_the_error_and_next_try_until_the_next_attempt():
    d = reach(State.WAITING)
    assert (d.last_error, d.next_try) == ("refused", 5.0)
    d.connect()
    assert d.next_try is None and d.last_error == "refused"


def test_watchers_are_told_of_the_wait_and_of_the_retry_with_its_attempt_number():
    watcher = Watcher()
    d = Delivery("j1", "h:1", [watcher])
    d.connect()
    d.wait("connection refused", 12.5)
    d.connect()
    d.wait("connection refused", 20.0)
    d.finish()  # ending a wait (stop, cancel) is no retry
    assert watcher.told == [
        ("waiting", "j1", "h:1", 1, "connection refused", 12.5),
        ("retrying", "j1", "h:1", 2),
        ("waiting", "j1", "h:1", 2, "connection refused", 20.0),
    ]


def test_a_failing_watcher_is_logged_and_the_others_are_still_told():
    from twisted.logger import globalLogPublisher

    @implementer(IDeliveryWatcher)
    class Broken(Watcher):
        def delivery_waiting(self, *args):
            raise RuntimeError("watcher bug")

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        good = Watcher()
        d = Delivery("j1", "h:1", [Broken(), good])
        d.connect()
        d.wait("refused", 1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert d.state is State.WAITING
    assert good.told == [("waiting", "j1", "h:1", 1, "refused", 1.0)]
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("watcher bug",)]


def test_the_queue_status_reads_the_current_delivery_state():
    q = DestinationQueue("h:1")
    assert q.status()["state"] == "idle" and q.status()["in_progress"] == 0
    q.current = reach(State.WAITING, job_id="j7")
    status = q.status()
    assert (status["state"], status["waiting"], status["job_id"], status["attempt"], status["next_try"]) == (
        "waiting", 1, "j7", 1, 5.0,
    )
    q.current.connect()
    assert q.status()["state"] == "connecting" and q.status()["waiting"] == 0


# --- the pool on a memory reactor ------------------------------------------------------


class Net:
    """A pool on a L{MemoryReactorClock}: connection attempts wait until refused here."""

    def __init__(self, watchers=()):
        self.reactor = MemoryReactorClock()
        self.pool = DestinationPool(self.reactor, AllowList.allow_all(), watchers)
        self.pool.startService()
        self.refused = 0

    def refuse(self):
        """Refuse the oldest connection attempt still pending."""
        connector = self.reactor.connectors[self.refused]
        factory = self.reactor.tcpClients[self.refused][2]
        self.refused += 1
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def status(self):
        return self.pool.status()[str(DEST)]


def test_a_watcher_passed_in_is_told_and_the_status_follows_the_machine():
    watcher = Watcher()
    net = Net([watcher])
    results = []
    net.pool.deliver(DEST, b"job", SendSettings(), "j1", policy=RetryPolicy(10.0, 10.0)).addCallback(results.append)
    assert net.status()["state"] == "connecting" and len(net.reactor.tcpClients) == 1
    net.refuse()
    [(what, job_id, dest, attempt, error, next_try)] = watcher.told
    assert (what, job_id, dest, attempt) == ("waiting", "j1", "127.0.0.1:9100", 1)
    assert error.startswith("connection refused by 127.0.0.1:9100")
    assert net.status()["state"] == "waiting" and net.status()["next_try"] == next_try
    net.reactor.advance(10.0 + 2.5)  # the back-off and its largest jitter
    assert watcher.told[1:] == [("retrying", "j1", "127.0.0.1:9100", 2)]
    assert net.status()["state"] == "connecting" and len(net.reactor.tcpClients) == 2
    assert net.pool.cancel("j1") is False  # connecting: the attempt completes
    net.refuse()
    assert net.pool.cancel("j1") is True
    assert [r.outcome for r in results] == ["cancelled"]
    assert results[0].message.startswith("cancelled by an operator while waiting to retry; connection refused")
    net.reactor.advance(0)
    assert net.status()["state"] == "idle" and net.status()["in_progress"] == 0


def test_add_watcher_takes_only_an_idelivery_watcher():
    net = Net()
    watcher = Watcher()
    verifyObject(IDeliveryWatcher, watcher)
    net.pool.add_watcher(watcher)
    assert net.pool.watchers == [watcher]

    class NotOne:
        def delivery_waiting(self, *args):
            pass

    with pytest.raises(TypeError, match="NotOne does not provide IDeliveryWatcher"):
        net.pool.add_watcher(NotOne())
    with pytest.raises(TypeError):
        DestinationPool(net.reactor, watchers=[NotOne()])


def test_jobs_to_one_destination_take_its_connection_in_submission_order():
    net = Net()
    settings = SendSettings(retries=0)
    results = []
    for i in range(5):
        net.pool.deliver(DEST, b"x", settings, f"j{i}").addCallback(results.append)
    served = []
    for _ in range(5):
        served.append(net.status()["job_id"])
        assert len(net.reactor.tcpClients) == net.refused + 1  # one connection at a time
        net.refuse()
        net.reactor.advance(0)  # the lock goes to the next job in the next turn
    assert served == ["j0", "j1", "j2", "j3", "j4"]
    assert [r.outcome for r in results] == ["refused"] * 5
    assert net.status()["queued"] == 0 and net.status()["state"] == "idle"


def test_cancelling_a_waiter_removes_it_from_the_lock_and_keeps_the_order():
    net = Net()
    settings = SendSettings(retries=0)
    outcomes: dict[str, object] = {}

    def deliver(job_id):
        d = net.pool.deliver(DEST, b"x", settings, job_id)
        d.addCallbacks(lambda r: outcomes.__setitem__(job_id, r.outcome),
                       lambda f: outcomes.__setitem__(job_id, f.type))
        return d

    deliver("j1")
    deliver("j2")
    caller_gives_up = deliver("j3")
    deliver("j4")
    queue = net.pool._queues[str(DEST)]
    assert len(queue.lock.waiting) == 3
    assert net.pool.cancel("j2") is True  # an operator
    caller_gives_up.cancel()  # its caller
    assert len(queue.lock.waiting) == 1 and [t.delivery.job_id for t in queue.turns] == ["j4"]
    assert outcomes == {"j2": "cancelled", "j3": CancelledError}
    net.refuse()
    net.reactor.advance(0)
    assert net.status()["job_id"] == "j4"
    assert net.pool.cancel("j2") is False  # gone already


def test_stopping_ends_the_waiters_stopped_in_order():
    net = Net()
    results = {}
    for i in range(3):
        net.pool.deliver(DEST, b"x", SendSettings(), f"j{i}").addCallback(
            lambda r, job: results.__setitem__(job, r), f"j{i}")
    net.refuse()  # j0 waits to retry
    assert net.status()["state"] == "waiting"
    net.pool.stopService()
    assert {job: r.outcome for job, r in results.items()} == {"j0": "stopped", "j1": "stopped", "j2": "stopped"}
    assert results["j0"].message.startswith("service stopping; connection refused")
    assert results["j1"].message == results["j2"].message == "service stopping: 127.0.0.1:9100 not tried"
    assert len(net.reactor.tcpClients) == 1  # no job behind it was tried
