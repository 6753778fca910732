"""
A node's lease (C{shared/CLUSTER.md} 4.6): renewed every C{interval}, and
the self-fence.

The local deadline is the monotonic time at which the last renewal that
succeeded was I{sent}, plus C{ttl - margin}.  The database sets
C{lease_until} after that send, from its own clock, so the local deadline
falls at least C{margin} before anyone else may reap the node, and no
clock is compared across machines.  Past the deadline, or when a renewal is
refused (the lease expired, or was reaped), the node fences itself: the
C{on_fenced} callbacks run (abort the printer connections, stop claiming)
and the lease registers a new incarnation as soon as the database answers
(C{on_joined} callbacks).

The lease drives itself with the reactor's C{callLater} and reads
C{monotonic} for its deadline: a test gives both a L{task.Clock}.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="rawsvc.cluster")

#: Seconds between looks at the deadline.
CHECK_EVERY = 0.1

#: What the lease runs on the database: C{run(fn)} calls C{fn(conn)} on a thread; a Deferred of its result.
Runner = Callable[[Callable[[Any], Any]], Deferred]


class Lease:
    """See the module docstring.  C{incarnation} is None until registered, and while fenced."""

    def __init__(self, reactor: Any, run: Runner, node: str, ttl: float, margin: float, interval: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        from rawsvc.cluster import sql

        self.sql = sql
        self.reactor = reactor
        self.run = run
        self.node = node
        self.ttl, self.margin, self.interval = float(ttl), float(margin), float(interval)
        self.monotonic = monotonic
        self.incarnation: uuid.UUID | None = None
        #: Local monotonic time past which this incarnation must not act.
        self.deadline = float("-inf")
        #: Monotonic send time of the last renewal (or registration) that succeeded.
        self.renewed_at: float | None = None
        self.fenced = False
        self.fences = 0
        self.on_fenced: list[Callable[[str], None]] = []
        self.on_joined: list[Callable[[uuid.UUID], None]] = []
        #: True while the node stops on purpose: a refused renewal then is no reason to fence.
        self.quiet: Callable[[], bool] = lambda: False
        self._renewing = False
        self._running = False
        self._tick: LoopingCall | None = None
        self._check: LoopingCall | None = None

    # Questions ------------------------------------------------------------------

    def valid(self) -> bool:
        """This incarnation may act now (claim, connect): registered, not fenced, before its deadline."""
        return self.incarnation is not None and not self.fenced and self.monotonic() < self.deadline

    def age(self) -> float | None:
        """Seconds since the last successful renewal was sent (None before the first)."""
        return None if self.renewed_at is None else self.monotonic() - self.renewed_at

    # Lifetime -------------------------------------------------------------------

    def start(self, incarnation: uuid.UUID | None = None, registered_at: float | None = None) -> None:
        """
        Start renewing: C{incarnation} registered already (its registration
        sent at monotonic C{registered_at}), or a new one registered now.
        """
        self._running = True
        if incarnation is not None:
            self._joined(incarnation, registered_at if registered_at is not None else self.monotonic())
        self._tick = LoopingCall(self.renew)
        self._tick.clock = self.reactor
        self._tick.start(self.interval, now=incarnation is None).addErrback(self._crashed)
        self._check = LoopingCall(self.check)
        self._check.clock = self.reactor
        self._check.start(CHECK_EVERY, now=False).addErrback(self._crashed)

    def stop(self) -> None:
        self._running = False
        for loop in (self._tick, self._check):
            if loop is not None and loop.running:
                loop.stop()

    def _crashed(self, failure: Failure) -> None:
        log.failure("cluster: the lease loop crashed", failure)

    def _joined(self, incarnation: uuid.UUID, sent: float) -> None:
        self.incarnation = incarnation
        self.fenced = False
        self.renewed_at = sent
        self.deadline = sent + self.ttl - self.margin
        log.info("cluster: node {node} joined as incarnation {incarnation}", node=self.node,
                 incarnation=str(incarnation))
        for callback in list(self.on_joined):
            callback(incarnation)

    # The loop ---------------------------------------------------------------------

    def check(self) -> bool:
        """Fence now when past the deadline; whether the lease is valid."""
        if self.incarnation is not None and not self.fenced and self.monotonic() >= self.deadline:
            self.fence("lease deadline passed (last renewal {age:.1f} s ago)".format(age=self.age() or 0.0))
        return self.valid()

    def fence(self, why: str) -> None:
        """Stop acting as this incarnation: the C{on_fenced} callbacks run; a new one registers later."""
        if self.fenced or self.quiet():
            return
        self.fenced = True
        self.fences += 1
        log.error("cluster: fenced: node {node} incarnation {incarnation}: {why}; printer connections aborted,"
                  " claiming stopped", node=self.node, incarnation=str(self.incarnation), why=why)
        for callback in list(self.on_fenced):
            try:
                callback(why)
            except Exception:
                log.failure("cluster: a fence callback failed")

    def renew(self) -> Deferred | None:
        """One renewal (or, fenced or unregistered, one registration); None when one is under way."""
        if self._renewing or not self._running:
            return None
        self._renewing = True
        sent = self.monotonic()
        me = self.incarnation
        if me is None or self.fenced:
            d = self.run(lambda conn: self.sql.register(conn, self.node, self.ttl))
            d.addCallback(lambda new: self._joined(new, sent) if self._running else None)
        else:
            d = self.run(lambda conn: self.sql.renew(conn, me, self.ttl))
            d.addCallback(self._renewed, me, sent)
        d.addErrback(self._not_renewed)
        d.addBoth(self._done)
        return d

    def _renewed(self, ok: bool, me: uuid.UUID, sent: float) -> None:
        if me != self.incarnation or self.fenced:
            return
        if ok:
            self.renewed_at = sent
            self.deadline = sent + self.ttl - self.margin
        else:
            self.fence("lease renewal refused (the lease expired or the node was reaped)")

    def _not_renewed(self, failure: Failure) -> None:
        log.warn("cluster: lease renewal failed: {error}", error=failure.getErrorMessage())

    def _done(self, _: Any) -> None:
        self._renewing = False
