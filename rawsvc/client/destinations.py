"""
The destination pool: one queue per C{host:port}, shared by every flow and
trigger, so jobs for one printer never interleave or race for its single
socket, while jobs for other printers go on in parallel.

A job holds its destination's slot from its first attempt to its last: an
attempt that a later one may cure (refused, reset mid-job, connect timeout,
unreachable host, failed lookup, stalled printer) is retried with capped,
jittered back-off (L{rawsvc.client.retry.RetryPolicy}) until delivered or
C{retry_for} runs out, as CUPS's socket backend does.  While it waits, the
delivery is C{waiting} (attempt, last error, next try), its watchers (the
spool) are told, and later jobs for that printer wait behind it.  An
operator may cut the wait short (L{DestinationPool.retry_now}) or end the
delivery (L{DestinationPool.cancel}).  Every C{deliver} fires with a
L{DeliveryResult}; it never fails but when its caller cancels it.

Stopping is in two steps: L{DestinationPool.begin_stop} (the service's
stop grace starts) ends every back-off wait at once and retries nothing
more, while queued jobs are still delivered; C{stopService} (the grace is
over) ends the jobs still queued.  Either way such a delivery ends
C{stopped}, which its action reports as interrupted, not failed: the job
stays unfinished in the spool and resumes at the next start.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from zope.interface import implementer
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import Logger

from rawsvc.client.address import AddressError, AllowList, Destination, resolve
from rawsvc.client.protocol import (
    AttemptResult,
    DeliveryMachine,
    Ending,
    SendProtocol,
    SendSettings,
    Source,
    State,
)
from rawsvc.client.outcomes import (  # noqa: F401  (DeliveryResult and the outcomes are public here)
    CANCELLED, DELIVERED, STOPPED, DeliveryResult, _AttemptFields, _connect_failure, _dns_text, _not_allowed,
)
from rawsvc.client.queues import WAITING, DeliveryWatcher, _Cancelled, _Queue, _Stopping
from rawsvc.client.retry import RetryPolicy
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IDeliveryWatcher, IDestinationPool

log = Logger(namespace="rawsvc.client")


@implementer(IDestinationPool)
class DestinationPool(Service):
    """Per-destination queues; see the module docstring."""

    def __init__(self, reactor: Any = None, allow: AllowList | None = None) -> None:
        self.setName("destinations")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self._explicit = allow
        self._literals: list[Destination] = []
        self._queues: dict[str, _Queue] = {}
        self._stopping = False
        #: The stop grace has begun: no more retries (L{begin_stop}).
        self._no_retry = False
        #: job_id -> its turn in a queue, while it waits for it.
        self._turns: dict[str, Deferred[None]] = {}
        self.watchers: list[DeliveryWatcher] = []
        self.configured = allow is not None

    def add_watcher(self, watcher: IDeliveryWatcher) -> None:
        """Tell C{watcher} about deliveries that wait for a retry and try again."""
        self.watchers.append(watcher)

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

    def stopService(self) -> None:
        """The stop grace is over: jobs still waiting their turn end C{stopped}."""
        self.begin_stop()
        self._stopping = True
        for q in self._queues.values():
            while q.waiting:
                q.waiting.popleft().errback(_Stopping())
        return super().stopService()

    # Operators ---------------------------------------------------------------

    def _current(self, job_id: str) -> _Queue | None:
        for q in self._queues.values():
            if q.busy and q.job_id == job_id:
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
        turn = self._turns.pop(job_id, None)
        if turn is not None and not turn.called:
            for q in self._queues.values():
                if turn in q.waiting:
                    q.waiting.remove(turn)
            turn.errback(_Cancelled())
            return True
        current = self._current(job_id)
        if current is None or current.retry_wait is None:
            return False
        current.cancelled = True
        return current.end_wait()

    # Delivery ------------------------------------------------------------------

    def deliver(
        self,
        dest: Destination,
        source: Source,
        settings: SendSettings,
        job_id: str = "",
        total: int | None = None,
        policy: RetryPolicy | None = None,
    ) -> Deferred[DeliveryResult]:
        """
        Queue one job for C{dest}; fires with a L{DeliveryResult}.  Without
        C{policy}, C{settings} give the back-off and the number of retries.
        """
        key = str(dest)
        if self._stopping:
            return succeed(DeliveryResult(STOPPED, key, message=f"service stopping: {key} not tried"))
        if not self.allow.may_allow(dest):
            return succeed(_not_allowed(key))
        if policy is None:
            policy = RetryPolicy(settings.retry_delay, settings.max_retry_delay, retries=settings.retries)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(key)

        def leave_queue(cancelled: Deferred[None]) -> None:
            # Cancelled while waiting its turn: give the place up, so the
            # queue never hands its single connection to a dead job.
            try:
                q.waiting.remove(cancelled)
            except ValueError:
                pass

        turn: Deferred[None] = Deferred(leave_queue)
        q.waiting.append(turn)
        if job_id:
            self._turns[job_id] = turn
        machine = DeliveryMachine(lambda state: self._set_state(q, state.value))

        def run(_: None) -> Deferred[DeliveryResult]:
            return self._run(q, dest, source, settings, policy, machine, job_id, total)

        def not_run(failure: Any) -> DeliveryResult:
            failure.trap(_Stopping, _Cancelled)
            machine.to(State.DONE)
            if failure.check(_Cancelled):
                return DeliveryResult(CANCELLED, key, message=f"cancelled by an operator before {key} was tried")
            return DeliveryResult(STOPPED, key, message=f"service stopping: {key} not tried")

        def forget(result: Any) -> Any:
            if self._turns.get(job_id) is turn:
                del self._turns[job_id]
            return result

        d = turn.addBoth(forget).addCallbacks(run, not_run)
        self._next(q)
        return d

    def _next(self, q: _Queue) -> None:
        while not q.busy and q.waiting:
            turn = q.waiting.popleft()
            if turn.called:  # cancelled meanwhile
                continue
            q.busy = True
            turn.callback(None)

    def _set_state(self, q: _Queue, state: str) -> None:
        if state == State.DONE.value:
            return  # the queue goes idle (or to its next job) in _run
        q.state = state
        q.last_change = time.time()

    def _tell(self, method: str, *args: Any) -> None:
        for watcher in self.watchers:
            try:
                getattr(watcher, method)(*args)
            except Exception:
                log.failure("delivery watcher {watcher} failed", watcher=watcher)

    @inlineCallbacks
    def _run(self, q, dest, source, settings, policy, machine, job_id, total):
        key = str(dest)
        q.job_id = job_id
        q.cancelled = False
        attempt = 0
        first = self.reactor.seconds()
        result: DeliveryResult
        try:
            while True:
                attempt += 1
                q.attempts += 1
                q.attempt = attempt
                machine.to(State.CONNECTING)
                result = yield self._attempt(dest, source, settings, machine, attempt, total)
                log.info(
                    "job {job_id} to {dest}: attempt {attempt}: {outcome}",
                    job_id=job_id, dest=key, attempt=attempt, outcome=result.outcome,
                    written=result.written, error=result.message,
                )
                if result.ok:
                    break
                if self._no_retry:
                    if policy.gives_up(result.outcome, 1, 0.0):
                        break  # it would not have been retried anyway
                    result = attrs.evolve(result, outcome=STOPPED, message=f"service stopping; {result.message}")
                    break
                if policy.gives_up(result.outcome, attempt, self.reactor.seconds() - first):
                    break
                q.retries += 1
                machine.to(State.QUEUED)
                delay = policy.delay(attempt)
                q.next_try = time.time() + delay
                q.last_error = result.message
                self._set_state(q, WAITING)
                log.info("job {job_id} to {dest}: waiting {delay:.1f} s before attempt {next}: {error}",
                         job_id=job_id, dest=key, delay=delay, next=attempt + 1, error=result.message)
                self._tell("delivery_waiting", job_id, key, attempt, result.message, q.next_try)
                q.retry_wait = Deferred()
                q.retry_call = self.reactor.callLater(delay, q.end_wait)
                try:
                    yield q.retry_wait
                except _Stopping:
                    result = attrs.evolve(result, outcome=STOPPED, message=f"service stopping; {result.message}")
                    break
                finally:
                    q.retry_wait = q.retry_call = q.next_try = None
                if q.cancelled:
                    result = attrs.evolve(
                        result, outcome=CANCELLED,
                        message=f"cancelled by an operator while waiting to retry; {result.message}",
                    )
                    break
                self._tell("delivery_retrying", job_id, key, attempt + 1)
        except CancelledError:  # its caller gave up on it
            result = DeliveryResult(STOPPED, key, attempt, message=f"delivery to {key} cancelled")
        except Exception as e:  # a bug: say so, never leave the queue stuck
            log.failure("delivery to {dest} crashed", dest=key)
            text = str(e) or type(e).__name__
            result = DeliveryResult("error", key, attempt, message=f"internal error sending to {key}: {text}")
        finally:
            if machine.state is not State.DONE:
                machine.to(State.DONE)
            q.busy = False
            q.job_id = ""
            q.attempt = 0
            self._set_state(q, "idle")
            self.reactor.callLater(0, self._next, q)
        if result.outcome == STOPPED:
            # The stop cut this job off: the jobs behind it must not overtake
            # it (they all resume, in order, at the next start).
            while q.waiting:
                q.waiting.popleft().errback(_Stopping())
        result = attrs.evolve(result, attempts=attempt)
        if not result.ok and attempt > 1:
            result = attrs.evolve(result, message=f"{result.message} ({attempt} attempts)")
        q.last_outcome = result.outcome
        if result.ok:
            q.delivered += 1
            q.last_error = ""
        else:
            q.failures += 1
            q.last_error = result.message
        q.bytes_sent += result.written
        return result

    @inlineCallbacks
    def _attempt(self, dest, source, settings, machine, attempt, total):
        key = str(dest)
        try:
            addresses = yield resolve(self.reactor, dest)
        except DNSLookupError as e:
            return DeliveryResult("dns_failure", key, message=f"cannot resolve {dest.host!r} ({key}): {_dns_text(e)}")
        allowed = self.allow.filter(dest, addresses)
        if not allowed:
            return _not_allowed(key, addresses)
        failure: DeliveryResult | None = None
        for address in allowed:
            proto = SendProtocol(self.reactor, source, settings, machine, total)
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = kind(self.reactor, address, dest.port, timeout=settings.connect_timeout)
            try:
                yield connectProtocol(endpoint, proto)
            except (ConnectError, CancelledError) as e:
                this = _connect_failure(key, address, e, settings)
                if failure is None or failure.outcome != "refused":
                    failure = this
                continue
            ended: AttemptResult = yield proto.finished
            return _from_attempt(key, address, ended, settings)
        assert failure is not None
        return failure


def _from_attempt(key: str, address: str, r: AttemptResult, settings: SendSettings) -> DeliveryResult:
    common = _AttemptFields(written=r.written, total=r.total, reply=r.reply, ending=r.ending.value, address=address)
    total = r.total if r.total is not None else "?"
    if r.ending in (Ending.EOF, Ending.DELAY, Ending.SENT):
        return DeliveryResult(DELIVERED, key, message=f"delivered {r.written} bytes to {key}", **common)
    if r.ending is Ending.EOF_TIMEOUT:
        return DeliveryResult(
            "reply_timeout", key,
            message=f"reply timeout: {key} did not close the connection within "
            f"{settings.eof_timeout:g} s after all {r.written} bytes were written",
            **common,
        )
    if r.ending is Ending.RESET_DRAINING:
        # The printer's kernel acknowledged every byte: the job is printed (or
        # the printer's own to lose).  Sending it again would print it twice.
        log.warn(
            "{dest} reset the connection ({error}) after acknowledging all {written} bytes; "
            "counted as delivered, not sent again",
            dest=key, error=r.error, written=r.written,
        )
        return DeliveryResult(
            DELIVERED, key,
            message=f"delivered {r.written} bytes to {key} (the printer then reset the connection: {r.error})",
            **common,
        )
    if r.ending is Ending.STALLED:
        return DeliveryResult(
            "send_timeout", key,
            message=f"send timeout: {key} took no data for {settings.send_timeout:g} s "
            f"(printer stopped reading) after {r.written} of {total} bytes were written",
            **common,
        )
    if r.ending is Ending.SOURCE_ERROR:
        return DeliveryResult("source_error", key, message=f"sending to {key}: {r.error}", **common)
    return DeliveryResult(
        "reset", key,
        message=f"connection to {key} reset mid-job ({r.error}) after {r.written} of {total} bytes were written",
        **common,
    )


def pool_for(context: Any) -> DestinationPool:
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
