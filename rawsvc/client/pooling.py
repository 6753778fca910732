"""
The printer-pool side of the destination pool (L{PoolDelivery}, a part of
L{rawsvc.client.destinations.DestinationPool}): which pool members cool
down, moving a failed member's queued pool jobs, and L{deliver_pool}, which
sends one job to one member of a L{rawsvc.client.pools.PrinterPool} and
sends it on to another when it comes back C{moved}.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from rawsvc.client.address import Destination
from rawsvc.client.machine import Delivery
from rawsvc.client.outcomes import DeliveryResult
from rawsvc.client.pools import MOVED, PrinterPool
from rawsvc.client.protocol import SendSettings, Source
from rawsvc.client.queues import DestinationQueue
from rawsvc.client.retry import RetryPolicy
from rawsvc.interfaces import IDeliveryWatcher

log = Logger(namespace="rawsvc.client")


class PoolDelivery:
    """Cool-downs and pool deliveries, for L{rawsvc.client.destinations.DestinationPool}."""

    reactor: Any
    watchers: list[IDeliveryWatcher]
    _queues: dict[str, DestinationQueue]
    #: Pool members cooling down after a failure: key -> reactor seconds when it ends.
    _cooling: dict[str, float]

    if TYPE_CHECKING:
        def deliver(
            self, dest: Destination, source: Source, settings: SendSettings, job_id: str = "",
            total: int | None = None, policy: RetryPolicy | None = None, pool: PrinterPool | None = None,
        ) -> Deferred[DeliveryResult]: ...

    # Printer pools ---------------------------------------------------------------

    def cooling_until(self, key: str) -> float:
        """When printer C{key}'s cool-down ends (reactor seconds); 0 when it is not cooling down."""
        until = self._cooling.get(key, 0.0)
        if until and until <= self.reactor.seconds():
            del self._cooling[key]
            return 0.0
        return until

    def queued(self, key: str) -> int:
        """Jobs in printer C{key}'s queue, the one it is sending included."""
        q = self._queues.get(key)
        return 0 if q is None else len(q.lock.waiting) + (1 if q.current is not None else 0)

    def _elsewhere(self, pool: PrinterPool | None, key: str) -> bool:
        """Whether a member of C{pool} other than C{key} is not cooling down."""
        return pool is not None and any(str(m) != key and not self.cooling_until(str(m)) for m in pool.members)

    def _cool(self, pool: PrinterPool, q: DestinationQueue, reason: str) -> bool:
        """
        Printer C{q.key} failed: it cools down, and when another member is
        not cooling down the pool's jobs queued for it move; whether they do.
        """
        self._cooling[q.key] = self.reactor.seconds() + pool.cooldown
        if not self._elsewhere(pool, q.key):
            return False
        moved = q.move_pooled(MOVED)
        log.info("{dest} cools down for {cooldown:g} s ({reason}); {moved} queued jobs move to other printers",
                 dest=q.key, cooldown=pool.cooldown, reason=reason, moved=moved)
        return True

    @inlineCallbacks
    def deliver_pool(
        self,
        pool: PrinterPool,
        source: Source,
        settings: SendSettings,
        job_id: str = "",
        total: int | None = None,
        policy: RetryPolicy | None = None,
    ) -> Generator[Deferred[Any], Any, DeliveryResult]:
        """Deliver one job to one printer of C{pool} (L{rawsvc.client.pools}); a L{DeliveryResult}."""
        tries = 0
        while True:
            dest = pool.order(self.cooling_until, self.queued)[0]
            result: DeliveryResult = yield self.deliver(dest, source, settings, job_id, total, policy, pool)
            tries += result.attempts
            if result.outcome != MOVED:
                return attrs.evolve(result, attempts=tries)
            log.info("job {job_id}: {message}", job_id=job_id, message=result.message)

    def _moved_after_wait(self, delivery: Delivery, key: str, result: DeliveryResult) -> DeliveryResult:
        """A waiting (or held) pooled delivery goes to a printer that is back: its watchers see it try again."""
        for watcher in list(self.watchers):
            try:
                watcher.delivery_retrying(delivery.job_id, key, delivery.attempt + 1)
            except Exception:
                log.failure("delivery watcher {watcher} failed", watcher=watcher)
        return attrs.evolve(result, outcome=MOVED, message=f"{result.message}; moved to another printer of the pool")

