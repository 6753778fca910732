"""
The destination pool: one queue per C{host:port}, shared by every flow and
trigger, so jobs for one printer never interleave or race for its single
socket, while jobs for other printers go on in parallel.

A job holds its destination's slot from its first attempt to its last: an
attempt that a later one may cure (refused, reset mid-job, connect timeout,
unreachable host, failed lookup, stalled printer) is retried with capped,
jittered back-off (L{rawsvc.client.retry.RetryPolicy}) until delivered or
C{retry_for} runs out, as CUPS's socket backend does.  While it waits, the
delivery is C{waiting} (attempt, last error, next try), its watchers
(L{IDeliveryWatcher} providers: the spool) are told, and later jobs for
that printer wait behind it.  A delivery's states are its
L{rawsvc.client.machine.Delivery} machine's; a destination's one connection
is a L{DeferredLock} (L{rawsvc.client.queues.DestinationQueue}), whose
waiters are served in submission order.  An
operator may cut the wait short (L{DestinationPool.retry_now}) or end the
delivery (L{DestinationPool.cancel}).  Every C{deliver} fires with a
L{DeliveryResult}; it never fails but when its caller cancels it.

With C{preflight} set, each attempt first asks the printer's status on a
short connection of its own (L{rawsvc.client.attempts.check_status}); a
printer that is not ready makes the delivery C{held} (nothing sent), checked
again with the same back-off, for as long as it takes.  A printer pool
(L{rawsvc.client.pools}, L{rawsvc.client.pooling}) puts each job in one
member's queue; a member that fails cools down and the pool's jobs move
on (C{moved}) to another member.

Stopping is in two steps: L{DestinationPool.begin_stop} (the service's
stop grace starts) ends every back-off wait at once and retries nothing
more, while queued jobs are still delivered; C{stopService} (the grace is
over) ends the jobs still queued.  Either way such a delivery ends
C{stopped}, which its action reports as interrupted, not failed: the job
stays unfinished in the spool and resumes at the next start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs
from zope.interface import implementer
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.client.attempts import check_status, send
from rawsvc.client.address import AddressError, AllowList, Destination
from rawsvc.client.machine import Delivery, InvalidTransition, State, transition_text
from rawsvc.client.outcomes import (  # noqa: F401  (DeliveryResult and the outcomes are public here)
    CANCELLED, DELIVERED, STOPPED, DeliveryResult, _not_allowed,
)
from rawsvc.client.pooling import PoolDelivery
from rawsvc.client.pools import MOVED, PrinterPool
from rawsvc.client.preflight import Readiness
from rawsvc.client.protocol import SendSettings, Source
from rawsvc.client.queues import DestinationQueue, Turn, _Cancelled, _Stopping
from rawsvc.client.retry import TRANSIENT, RetryPolicy
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IDeliveryWatcher, IDestinationControl, IDestinationPool

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

log = Logger(namespace="rawsvc.client")


def _watcher(watcher: Any) -> IDeliveryWatcher:
    if not IDeliveryWatcher.providedBy(watcher):
        raise TypeError(f"{type(watcher).__name__} does not provide IDeliveryWatcher")
    return watcher


@implementer(IDestinationPool, IDestinationControl)
class DestinationPool(PoolDelivery, Service):
    """Per-destination queues; see the module docstring."""

    def __init__(
        self, reactor: Any = None, allow: AllowList | None = None, watchers: Iterable[IDeliveryWatcher] = (),
    ) -> None:
        self.setName("destinations")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self._explicit = allow
        self._literals: list[Destination] = []
        self._queues: dict[str, DestinationQueue] = {}
        #: Pool members cooling down after a failure: key -> reactor seconds when it ends.
        self._cooling: dict[str, float] = {}
        #: job_id -> (its first attempt's time, failed attempts) while a pool moves it between printers.
        self._pool_tries: dict[str, tuple[float, int]] = {}
        self._stopping = False
        #: The stop grace has begun: no more retries (L{begin_stop}).
        self._no_retry = False
        #: Told about deliveries that wait to retry and retry (see L{add_watcher}).
        self.watchers: list[IDeliveryWatcher] = [_watcher(w) for w in watchers]
        self.configured = allow is not None
        #: Cluster mode (L{rawsvc.cluster.pool.ClusterDeliveries}): C{deliver} enqueues there, and a
        #: node's delivery worker runs the claimed deliveries here with L{deliver_here}.
        self.cluster: Any = None
        #: Asked before every attempt (cluster mode: the lease is valid); False ends the delivery C{stopped}.
        self.gate: Callable[[], bool] | None = None

    def add_watcher(self, watcher: IDeliveryWatcher) -> None:
        """Tell C{watcher} (an L{IDeliveryWatcher}) about deliveries that wait to retry and retry."""
        self.watchers.append(_watcher(watcher))

    # Configuration ----------------------------------------------------------

    def configure(self, allowed: list[str] | None) -> None:
        """Set C{[service] allowed_destinations}; L{AddressError} when bad."""
        self.configured = True
        self._explicit = None if allowed is None else AllowList.parse(allowed)

    def add_literal(self, dest: Destination) -> None:
        """A destination the config names literally (allowed by default)."""
        self._literals.append(dest)

    @property
    def allow(self) -> AllowList:
        if self._explicit is not None:
            return self._explicit
        return AllowList.default(self._literals)

    @property
    def explicit(self) -> bool:
        return self._explicit is not None

    # Status and lifetime --------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Per destination ("host:port"): state, queue depth and counters."""
        return {key: q.status() for key, q in self._queues.items()}

    def startService(self) -> None:
        self._stopping = self._no_retry = False
        super().startService()

    def begin_stop(self) -> None:
        """The stop grace begins: end every back-off wait now and retry nothing more."""
        self._no_retry = True
        for q in self._queues.values():
            q.end_wait(_Stopping())
            q.end_pause(STOPPED)

    def stopService(self) -> None:
        """The stop grace is over: jobs still waiting their turn end C{stopped}."""
        self.begin_stop()
        self._stopping = True
        for q in self._queues.values():
            q.end_turns(STOPPED)
        return super().stopService()

    def abort_all(self) -> int:
        """
        Cut every delivery of this process now (cluster mode's self-fence):
        back-off waits and waits for a paused destination's resume end
        C{stopped}, connected attempts are aborted (C{abortConnection});
        the connections aborted.
        """
        aborted = 0
        for q in self._queues.values():
            current = q.current
            if current is not None:
                current.abandoned = True
            q.end_wait(_Stopping())
            q.end_pause(STOPPED)
            if current is not None:
                if current.transport is not None:
                    current.transport.abortConnection()
                    aborted += 1
                elif current.pending is not None:
                    # Connecting, or in its pre-flight exchange: cancelled before one byte of the job goes out.
                    current.pending.cancel()
                    aborted += 1
        return aborted

    # Operators ---------------------------------------------------------------

    def _current(self, job_id: str) -> DestinationQueue | None:
        for q in self._queues.values():
            if q.current is not None and q.current.job_id == job_id:
                return q
        return None

    def retry_now(self, job_id: str) -> bool:
        """Make the next attempt of C{job_id}, waiting for a retry, now; False when it is not waiting."""
        q = self._current(job_id) if job_id else None
        return q is not None and q.end_wait()

    def cancel(self, job_id: str) -> bool:
        """
        End C{job_id}'s delivery now when it waits for a retry or for its
        turn (it fires C{cancelled}); False when it is not in a queue or is
        connected (an attempt in progress completes).
        """
        if not job_id:
            return False
        for q in self._queues.values():
            for turn in q.turns:
                if turn.delivery.job_id == job_id:
                    turn.end(CANCELLED)
                    return True
        current = self._current(job_id)
        return current is not None and (current.end_wait(_Cancelled()) or current.end_pause(CANCELLED))

    def pause(self, key: str, who: str = "an operator") -> bool:
        """
        Start no attempt to destination C{key} (C{"host:port"}, any
        spelling L{Destination.parse} takes) until L{resume}: its queued
        deliveries wait, an attempt in progress completes.  False when it
        was paused already; L{AddressError} when C{key} is no destination
        or not allowed.
        """
        return self._queue(key, create=True).pause(who)

    def resume(self, key: str) -> bool:
        """
        Let deliveries to C{key} go on; False when it was not paused.  A
        queue that only the pause made (nothing delivered to it, nothing
        waiting) is forgotten again.
        """
        q = self._queue(key)
        if q is None or not q.resume():
            return False
        if q.unused and self._queues.get(q.key) is q:
            del self._queues[q.key]
        return True

    def named(self) -> list[str]:
        """The destinations the config names literally."""
        return [str(d) for d in self._literals]

    @overload
    def _queue(self, key: str, create: Literal[True]) -> DestinationQueue: ...

    @overload
    def _queue(self, key: str, create: bool = False) -> DestinationQueue | None: ...

    def _queue(self, key: str, create: bool = False) -> DestinationQueue | None:
        """
        The queue of destination C{key} under its canonical spelling
        (C{str(Destination.parse(key))}, as L{deliver_here} files it); with
        C{create}, a new one when it has none (never replacing one).
        L{AddressError} when C{key} is no destination or not allowed.
        """
        dest = Destination.parse(key)
        canonical = str(dest)
        q = self._queues.get(canonical)
        if q is not None or not create:
            return q
        if not self.allow.may_allow(dest):
            raise AddressError(f"{key} is not in allowed_destinations")
        q = self._queues[canonical] = DestinationQueue(canonical)
        return q

    # Delivery ------------------------------------------------------------------

    def deliver(
        self,
        dest: Destination,
        source: Source,
        settings: SendSettings,
        job_id: str = "",
        total: int | None = None,
        policy: RetryPolicy | None = None,
        pool: PrinterPool | None = None,
        action_index: int = 0,
        run: int = 0,
    ) -> Deferred[DeliveryResult]:
        """
        Queue one job for C{dest}; fires with a L{DeliveryResult}.  In
        cluster mode (C{cluster} set, no printer pool) the delivery is
        enqueued in PostgreSQL as action C{action_index} of run C{run} of C{job_id} and any
        node may carry it out (L{rawsvc.cluster.pool}).  Without
        C{policy}, C{settings} give the back-off and the number of retries.
        Cancelling the result while the job waits for its turn gives its
        place up (it fails with C{CancelledError}); once it runs, the
        delivery ends C{stopped}.  With C{pool} (C{dest} one of its members),
        the job may end C{moved} instead: the printer failed and another
        member is not cooling down (L{deliver_pool} sends it there).
        """
        if self.cluster is not None and pool is None and job_id:
            if self._stopping:
                return succeed(DeliveryResult(STOPPED, str(dest), message=f"service stopping: {dest} not tried"))
            if not self.allow.may_allow(dest):
                return succeed(_not_allowed(str(dest)))
            if policy is None:
                policy = RetryPolicy(settings.retry_delay, settings.max_retry_delay, retries=settings.retries)
            return self.cluster.deliver(dest, source, settings, job_id, total, policy, action_index, run)
        return self.deliver_here(dest, source, settings, job_id, total, policy, pool)

    def deliver_here(
        self,
        dest: Destination,
        source: Source,
        settings: SendSettings,
        job_id: str = "",
        total: int | None = None,
        policy: RetryPolicy | None = None,
        pool: PrinterPool | None = None,
    ) -> Deferred[DeliveryResult]:
        """L{deliver} in this process: this node's queue for C{dest} (what cluster mode's worker runs)."""
        key = str(dest)
        if self._stopping:
            return succeed(DeliveryResult(STOPPED, key, message=f"service stopping: {key} not tried"))
        if not self.allow.may_allow(dest):
            return succeed(_not_allowed(key))
        if policy is None:
            policy = RetryPolicy(settings.retry_delay, settings.max_retry_delay, retries=settings.retries)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = DestinationQueue(key)
        delivery = Delivery(job_id, key, self.watchers)
        delivery.gate = self.gate
        turn = Turn(delivery, q.lock.acquire(), pooled=pool is not None)
        if not turn.acquired.called:
            q.turns.append(turn)

        def run(_: DeferredLock) -> Deferred[DeliveryResult]:
            if turn in q.turns:
                q.turns.remove(turn)
            return self._run(q, dest, source, settings, policy, delivery, total, pool)

        def not_run(failure: Failure) -> DeliveryResult | Failure:
            failure.trap(CancelledError)
            if turn in q.turns:
                q.turns.remove(turn)
            if not turn.ended_by:
                return failure  # its caller cancelled it: the lock's canceller gave its place up
            delivery.finish()
            if turn.ended_by == CANCELLED:
                return DeliveryResult(CANCELLED, key, message=f"cancelled by an operator before {key} was tried")
            if turn.ended_by == MOVED:
                return DeliveryResult(MOVED, key, message=f"{key} failed; moved to another printer of the pool")
            return DeliveryResult(STOPPED, key, message=f"service stopping: {key} not tried")

        return turn.acquired.addCallbacks(run, not_run)

    # One delivery ------------------------------------------------------------------

    @inlineCallbacks
    def _run(
        self, q: DestinationQueue, dest: Destination, source: Source, settings: SendSettings,
        policy: RetryPolicy, delivery: Delivery, total: int | None, pool: PrinterPool | None = None,
    ) -> Generator[Deferred[Any], Any, DeliveryResult]:
        key = str(dest)
        q.current = delivery
        # A job a pool moved here keeps its count of failed attempts and its
        # first attempt's time: retries and retry_for span the whole pool.
        first, failed = self._pool_tries.pop(delivery.job_id, (self.reactor.seconds(), 0))
        held = 0
        result: DeliveryResult
        try:
            while True:
                if delivery.abandoned or (self.gate is not None and not self.gate()):
                    result = DeliveryResult(STOPPED, key, delivery.attempt,
                                            message=f"this node lost its cluster lease: {key} not tried again")
                    break
                if q.paused is not None:  # an operator paused it: wait (behind it, the queue waits too)
                    ended = yield q.until_resumed()
                    if delivery.abandoned:
                        continue  # fenced meanwhile (L{abort_all}): the check above ends it
                    if ended is not None:
                        why = "cancelled by an operator" if ended == CANCELLED else "service stopping"
                        result = DeliveryResult(ended, key, delivery.attempt, message=f"{why} while {key} was paused")
                        break
                    if self._no_retry:
                        result = DeliveryResult(STOPPED, key, delivery.attempt, message=f"service stopping: {key} not tried")
                        break
                    continue  # paused again, or this node fenced meanwhile: look again first
                q.attempts += 1
                delivery.connect()
                attempt = delivery.attempt
                status: Readiness | DeliveryResult | None = None
                if settings.preflight != "off":
                    delivery.pending = check_status(self.reactor, self.allow, dest, settings, delivery)
                    try:
                        status = yield delivery.pending
                    finally:
                        delivery.pending = None
                    if delivery.cut_off():  # fenced during the pre-flight exchange: send nothing
                        result = DeliveryResult(STOPPED, key, delivery.attempt,
                                                message=f"this node lost its cluster lease: {key} not sent")
                        break
                    if isinstance(status, Readiness) and not status.ready:
                        held += 1
                        log.info("job {job_id} to {dest}: held, the printer is not ready: {reason}",
                                 job_id=delivery.job_id, dest=key, reason=status.reason)
                        result = DeliveryResult("held", key, message=f"{key} is not ready: {status.reason}")
                        if pool is not None and self._cool(pool, q, status.reason):
                            result = attrs.evolve(result, outcome=MOVED)
                            break
                        ended = yield self._pause(q, delivery, policy, held, result, status.reason)
                        if ended is not None:
                            result = ended
                            break
                        if self._elsewhere(pool, key):
                            result = self._moved_after_wait(delivery, key, result)
                            break
                        continue
                if settings.preflight != "off" and isinstance(status, DeliveryResult):
                    result = status  # the status connection failed: a failed attempt
                elif delivery.cut_off():  # the lease was lost since the top of the attempt
                    result = DeliveryResult(STOPPED, key, delivery.attempt,
                                            message=f"this node lost its cluster lease: {key} not sent")
                    break
                else:
                    delivery.pending = send(self.reactor, self.allow, dest, source, settings, delivery, total)
                    try:
                        result = yield delivery.pending
                    finally:
                        delivery.pending = None
                log.info(
                    "job {job_id} to {dest}: attempt {attempt}: {outcome}",
                    job_id=delivery.job_id, dest=key, attempt=attempt, outcome=result.outcome,
                    written=result.written, error=result.message,
                )
                if result.ok:
                    self._cooling.pop(key, None)
                    break
                if delivery.abandoned:
                    result = attrs.evolve(result, outcome=STOPPED, message=f"abandoned (fenced); {result.message}")
                    break
                failed += 1
                if self._no_retry:
                    if policy.gives_up(result.outcome, 1, 0.0):
                        break  # it would not have been retried anyway
                    result = attrs.evolve(result, outcome=STOPPED, message=f"service stopping; {result.message}")
                    break
                if policy.gives_up(result.outcome, failed, self.reactor.seconds() - first):
                    break
                if pool is not None and result.outcome in TRANSIENT and self._cool(pool, q, result.message):
                    result = attrs.evolve(result, outcome=MOVED)
                    break
                q.retries += 1
                q.last_error = result.message
                q.last_error_at = time.time()
                ended = yield self._pause(q, delivery, policy, failed, result)
                if ended is not None:
                    result = ended
                    break
                if self._elsewhere(pool, key):
                    result = self._moved_after_wait(delivery, key, result)
                    break
        except CancelledError:  # its caller gave up on it, or a fence cut its pre-flight off
            why = "this node lost its cluster lease" if delivery.abandoned else "cancelled"
            result = DeliveryResult(STOPPED, key, delivery.attempt, message=f"delivery to {key} {why}")
        except Exception as e:  # a bug: say so, never leave the queue stuck
            log.failure("delivery to {dest} crashed", dest=key)
            text = transition_text(e) if isinstance(e, InvalidTransition) else str(e) or type(e).__name__
            result = DeliveryResult("error", key, delivery.attempt, message=f"internal error sending to {key}: {text}")
        finally:
            if delivery.state is not State.DONE:
                delivery.finish()
            q.current = None
            q.idle_since = time.time()
        if result.outcome == MOVED:
            self._pool_tries[delivery.job_id] = (first, failed)
        return self._finished(q, delivery, result)

    @inlineCallbacks
    def _pause(
        self, q: DestinationQueue, delivery: Delivery, policy: RetryPolicy, count: int, result: DeliveryResult,
        hold: str | None = None,
    ) -> Generator[Deferred[Any], Any, DeliveryResult | None]:
        """
        Wait the back-off after C{count} failed attempts (or holds) with the
        delivery C{waiting} (or C{held} for the reason C{hold}); None when it is over, else the
        result the delivery ends with (stopped, cancelled).
        """
        if self._no_retry:
            return attrs.evolve(result, outcome=STOPPED, message=f"service stopping; {result.message}")
        q.retry = policy.wait(self.reactor, count)
        what = "check" if hold is not None else "attempt"
        log.info("job {job_id} to {dest}: waiting {delay:.1f} s before the next {what}: {error}",
                 job_id=delivery.job_id, dest=q.key, delay=q.retry.delay, what=what, error=result.message)
        if hold is not None:
            delivery.hold(hold, time.time() + q.retry.delay)
        else:
            delivery.wait(result.message, time.time() + q.retry.delay)
        try:
            yield q.retry.deferred
        except _Stopping:
            return attrs.evolve(result, outcome=STOPPED, message=f"service stopping; {result.message}")
        except _Cancelled:
            return attrs.evolve(
                result, outcome=CANCELLED,
                message=f"cancelled by an operator while waiting to retry; {result.message}",
            )
        finally:
            q.retry = None
        return None

    def _finished(self, q: DestinationQueue, delivery: Delivery, result: DeliveryResult) -> DeliveryResult:
        """Count C{result} and hand the destination on; the delivery's final result."""
        if result.outcome == STOPPED:
            # The stop cut this job off: the jobs behind it must not overtake
            # it (they all resume, in order, at the next start).
            q.end_turns(STOPPED)
        # The next delivery starts in a later turn of the reactor, so that a
        # long queue of jobs failing at once does not recurse.
        self.reactor.callLater(0, q.lock.release)
        attempts = delivery.attempt
        result = attrs.evolve(result, attempts=attempts)
        if result.outcome == MOVED:
            q.last_outcome, q.last_error = result.outcome, result.message
            return result
        if not result.ok and attempts > 1:
            result = attrs.evolve(result, message=f"{result.message} ({attempts} attempts)")
        q.last_outcome = result.outcome
        q.rate.add(result.ok, time.time())
        if result.ok:
            q.delivered += 1
            q.last_error = ""
        else:
            q.failures += 1
            q.last_error = result.message
            q.last_error_at = time.time()
        q.bytes_sent += result.written
        return result


def pool_for(context: BuildContext) -> DestinationPool:
    """
    The config's shared pool, with C{[service] allowed_destinations} applied;
    a bad entry is a L{ConfigIssue} naming that key (raised once).
    """
    pool = context.destinations
    if not pool.configured:
        try:
            pool.configure(context.service_options.get("allowed_destinations"))
        except AddressError as e:
            raise ConfigIssue(f"[service] allowed_destinations: {e}", "allowed_destinations") from None
    return pool
