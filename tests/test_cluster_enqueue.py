"""
L{rawsvc.cluster.pool.ClusterDeliveries}: an enqueue that fails is tried
again with back-off while the flow waits; a stop or the flow's cancel ends
the tries (the flow ends C{stopped}).  Exact, on a L{task.Clock}: the
enqueue and the result reads are plain functions answering Deferreds.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

pytest.importorskip("psycopg")

from rawsvc.client.address import Destination  # noqa: E402
from rawsvc.client.outcomes import STOPPED, DeliveryResult  # noqa: E402
from rawsvc.client.protocol import SendSettings  # noqa: E402
from rawsvc.client.retry import RetryPolicy  # noqa: E402
from rawsvc.cluster.pool import ClusterDeliveries, encode_result  # noqa: E402


class Db:
    """Enqueues fail C{failures} times, then make delivery 7; results: delivery 7 done once C{finished}."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.tries = 0
        self.finished = False

    def enqueue_run(self, fn, order):
        self.tries += 1
        if self.tries <= self.failures:
            return fail(RuntimeError("deadlock detected"))
        return succeed(7)

    def run(self, fn):
        if not self.finished:
            return succeed({})
        return succeed({7: ("done", encode_result(DeliveryResult("delivered", "127.0.0.1:9100")))})


def deliver(deliveries: ClusterDeliveries):
    got: list[DeliveryResult] = []
    d = deliveries.deliver(Destination.parse("127.0.0.1:9100"), b"data", SendSettings(), "job-1", 4,
                           RetryPolicy(), 1)
    d.addCallback(got.append)
    return d, got


def test_a_failed_enqueue_is_tried_again_with_back_off_and_the_flow_keeps_waiting():
    clock, db = Clock(), Db(failures=3)
    deliveries = ClusterDeliveries(db.enqueue_run, db.run, clock, retry_delay=0.25, max_retry_delay=0.5)
    _, got = deliver(deliveries)
    assert db.tries == 1 and got == []
    for step, tries in [(0.125, 1), (0.125, 2), (0.375, 2), (0.125, 3), (0.375, 3), (0.125, 4)]:  # 0.25, 0.5, 0.5
        clock.advance(step)
        assert db.tries == tries, (step, db.tries)
    assert got == [] and list(deliveries.waiters) == [7] and deliveries.enqueue_retries == 3
    db.finished = True
    deliveries.done(7)
    assert [r.outcome for r in got] == ["delivered"]
    assert clock.getDelayedCalls() == []


def test_a_stop_ends_the_tries_and_the_flow_ends_stopped():
    clock, db = Clock(), Db(failures=100)
    deliveries = ClusterDeliveries(db.enqueue_run, db.run, clock)
    _, got = deliver(deliveries)
    clock.advance(1)
    assert got == [] and db.tries > 1
    deliveries.stop()
    assert [r.outcome for r in got] == [STOPPED] and clock.getDelayedCalls() == []
    tries = db.tries
    clock.advance(10)
    assert db.tries == tries


def test_the_flow_cancelling_its_wait_ends_the_tries():
    clock, db = Clock(), Db(failures=100)
    deliveries = ClusterDeliveries(db.enqueue_run, db.run, clock)
    d, got = deliver(deliveries)
    d.cancel()
    assert [r.outcome for r in got] == [STOPPED] and clock.getDelayedCalls() == [] and deliveries.retrying == {}
    clock.advance(10)
    assert db.tries == 1
