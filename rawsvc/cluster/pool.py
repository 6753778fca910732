"""
Cluster deliveries (C{shared/CLUSTER.md} 4.1, 4.4, 4.5): the two halves of
C{send_tcp} in cluster mode.

L{ClusterDeliveries} is what L{rawsvc.client.destinations.DestinationPool}
hands C{deliver()} to when C{pool.cluster} is set: it enqueues a delivery
row (with its printer's next ticket, in the spool's group commit) and
waits for the row's result, woken by C{rawsvc_done} and by polling.

L{DeliveryWorker} claims printer heads on behalf of this node and runs
each with the pool's own machine (L{DestinationPool.deliver_here}:
connect, stream, half-close, back-channel, retries inside the claim), the
payload read from PostgreSQL one row at a time into a file of the node's;
then the fenced finish.  A delivery claimed more than once is a possible
repeat, and is logged so, with its job id.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.client.address import Destination
from rawsvc.client.outcomes import CANCELLED, STOPPED, DeliveryResult
from rawsvc.client.protocol import SendSettings, Source
from rawsvc.client.retry import RetryPolicy
from rawsvc.cluster import sql

log = Logger(namespace="rawsvc.cluster")

#: Deliveries one node carries out at once at most (each is a different printer).
MAX_IN_FLIGHT = 64

Runner = Callable[[Callable[[Any], Any]], Deferred]


def encode_settings(settings: SendSettings, policy: RetryPolicy, total: int | None) -> dict[str, Any]:
    return {"send": attrs.asdict(settings), "total": total,
            "policy": {"retry_delay": policy.retry_delay, "max_retry_delay": policy.max_retry_delay,
                       "retry_for": policy.retry_for, "retries": policy.retries, "factor": policy.factor}}


def decode_settings(stored: dict[str, Any]) -> tuple[SendSettings, RetryPolicy]:
    return SendSettings(**stored.get("send", {})), RetryPolicy(**stored.get("policy", {}))


def encode_result(result: DeliveryResult) -> dict[str, Any]:
    fields = attrs.asdict(result)
    fields["reply"] = base64.b64encode(result.reply).decode("ascii")
    return fields


def decode_result(stored: dict[str, Any]) -> DeliveryResult:
    fields = dict(stored)
    fields["reply"] = base64.b64decode(fields.get("reply") or "")
    known = {f.name for f in attrs.fields(DeliveryResult)}
    return DeliveryResult(**{k: v for k, v in fields.items() if k in known})


class ClusterDeliveries:
    """
    C{deliver()} in cluster mode.  C{enqueue_run(fn, destination)} runs a
    function in the spool's group commit, the batch's enqueues sorted by
    destination (L{rawsvc.spool.pg.PgStore.run}); C{run} on the node's work
    connection (results).  An enqueue that fails (a lost connection, a
    deadlock, the database restarting) is tried again after C{retry_delay}
    seconds, doubling up to C{max_retry_delay}, while the flow waits: it is
    idempotent (one row per job and action), so a try whose COMMIT went
    through but whose answer was lost finds its row.  Only a stop (the
    flow cancels its wait, or L{stop}) ends the tries.
    """

    def __init__(self, enqueue_run: Callable[[Callable[[Any], Any], str], Deferred], run: Runner,
                 reactor: Any = None, retry_delay: float = 0.1, max_retry_delay: float = 2.0) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.enqueue_run = enqueue_run
        self.run = run
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.waiters: dict[int, list[Deferred]] = {}
        self.stopping = False
        #: Enqueues waiting to be tried again: the delayed call, its flow's Deferred and destination.
        self.retrying: dict[Any, tuple[Deferred, str]] = {}
        #: Counter: enqueues tried again after a failure.
        self.enqueue_retries = 0
        #: Told (with no argument) when a delivery was enqueued here: the local claim loop.
        self.on_enqueued: Callable[[], None] = lambda: None

    def deliver(self, dest: Destination, source: Source, settings: SendSettings, job_id: str,
                total: int | None, policy: RetryPolicy, action_index: int, run: int = 0) -> Deferred[DeliveryResult]:
        key = str(dest)
        data = source if isinstance(source, bytes) else None  # None: the job's stored payload
        stored = encode_settings(settings, policy, len(data) if data is not None else total)
        result: Deferred[DeliveryResult] = Deferred(lambda d: self._gave_up(d, key))
        delay = [self.retry_delay]

        def enqueued(delivery_id: int) -> None:
            if result.called:
                return
            if self.stopping:  # enqueued during the stop: the row stays, the resumed flow finds it
                result.callback(DeliveryResult(STOPPED, key, message=f"service stopping: delivery to {key} "
                                                                    "left queued"))
                return
            self.waiters.setdefault(delivery_id, []).append(result)
            self.on_enqueued()
            self.poll([delivery_id])

        def not_enqueued(failure: Failure) -> None:
            if result.called:
                return
            if self.stopping:
                result.callback(DeliveryResult(STOPPED, key, message=f"cannot enqueue the delivery to {key}: "
                                                                    f"{failure.getErrorMessage()}"))
                return
            self.enqueue_retries += 1
            log.warn("cluster: cannot enqueue the delivery of job {job_id} to {destination} (trying again in"
                     " {delay:.1f} s): {error}", job_id=job_id, destination=key, delay=delay[0],
                     error=failure.getErrorMessage())
            call: Any = None
            call = self.reactor.callLater(delay[0], lambda: again(call))
            self.retrying[call] = (result, key)
            delay[0] = min(delay[0] * 2, self.max_retry_delay)

        def again(call: Any) -> None:
            self.retrying.pop(call, None)
            if not result.called and not self.stopping:
                attempt()

        def attempt() -> None:
            try:
                d = self.enqueue_run(lambda conn: sql.enqueue(conn, job_id, action_index, key, stored, data, run=run), key)
            except Exception:
                d = fail()
            d.addCallbacks(enqueued, not_enqueued).addErrback(
                lambda f: log.failure("cluster: enqueue of job {job_id} crashed", f, job_id=job_id))

        attempt()
        return result

    def _gave_up(self, d: Deferred, key: str) -> None:
        """The flow cancelled its wait (a stop): the row stays; the resumed flow finds it again."""
        for waiting in self.waiters.values():
            if d in waiting:
                waiting.remove(d)
        for call, (waiting_d, _) in list(self.retrying.items()):
            if waiting_d is d:
                del self.retrying[call]
                if call.active():
                    call.cancel()
        d.callback(DeliveryResult(STOPPED, key, message=f"service stopping: delivery to {key} left queued"))

    def done(self, delivery_id: int) -> None:
        """A C{rawsvc_done} NOTIFY: look at that delivery now."""
        if delivery_id in self.waiters:
            self.poll([delivery_id])

    def poll(self, ids: list[int] | None = None) -> Deferred:
        """Fire the waiters of deliveries that finished."""
        wanted = list(self.waiters) if ids is None else [i for i in ids if i in self.waiters]
        if not wanted:
            return succeed(None)
        d = self.run(lambda conn: sql.results(conn, wanted))
        d.addCallback(self._results)
        d.addErrback(lambda f: log.warn("cluster: cannot read delivery results: {error}",
                                        error=f.getErrorMessage()))
        return d

    def _results(self, found: dict[int, tuple[str, dict[str, Any]]]) -> None:
        for delivery_id, (_, stored) in found.items():
            for d in self.waiters.pop(delivery_id, []):
                if not d.called:
                    d.callback(decode_result(stored))

    def cancel(self, job_id: str) -> Deferred[bool]:
        """
        An operator's cancel of C{job_id}: its delivery still queued in the
        database ends C{cancelled} (whichever node would have sent it; the
        flow waiting for it, here, is told at once).  True when one was;
        a delivery a node is sending already completes.
        """
        stored = encode_result(DeliveryResult(CANCELLED, "", message="cancelled by an operator while queued"))
        d = self.run(lambda conn: sql.cancel_queued(conn, job_id, stored))

        def cancelled(ids: list[int]) -> Any:
            if ids:
                self.poll(ids)
                return True
            # Being sent by a node (maybe another): its holder is asked (L{DeliveryWorker.apply_cancels}).
            return self.run(lambda conn: sql.ask_cancel_sending(conn, job_id)).addCallback(lambda n: False)

        return d.addCallback(cancelled)

    def stop(self) -> None:
        """The stop grace is over: flows still waiting end C{stopped} (their rows stay, for any node)."""
        self.stopping = True
        retrying, self.retrying = self.retrying, {}
        for call, (d, key) in retrying.items():
            if call.active():
                call.cancel()
            if not d.called:
                d.callback(DeliveryResult(STOPPED, key, message=f"service stopping: cannot enqueue the delivery"
                                                               f" to {key}"))
        waiters, self.waiters = self.waiters, {}
        for ds in waiters.values():
            for d in ds:
                if not d.called:
                    d.callback(DeliveryResult(STOPPED, "", message="service stopping: delivery left queued"))


class DeliveryWorker:
    """
    Claims and runs deliveries for this node.  C{pool}: the node's
    L{DestinationPool}; C{run}: the work connection; C{lease}: the node's
    L{rawsvc.cluster.lease.Lease}; C{files_dir}: where payloads read back go.
    """

    def __init__(self, reactor: Any, pool: Any, run: Runner, lease: Any, files_dir: str,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.reactor = reactor
        self.pool = pool
        self.run = run
        self.lease = lease
        self.files_dir = files_dir
        self.max_in_flight = max_in_flight
        self.running: dict[int, tuple[sql.Claimed, uuid.UUID, Deferred | None]] = {}
        #: Seconds between tries of a finish (or release) the database did not answer, at most.
        self.max_retry_delay = 2.0
        self.stopped = False
        self._claiming = False
        self._again = False
        self._woken: Any = None
        #: Counters: claims made, claims lost at finish, possible repeats.
        self.claimed = 0
        self.lost = 0
        self.repeats = 0

    def wake(self) -> None:
        """Claim soon (debounced: many wake-ups in one reactor turn make one claim)."""
        if self._woken is None or not self._woken.active():
            self._woken = self.reactor.callLater(0, self.claim)

    def claim(self) -> Deferred | None:
        """One claim of as many printer heads as there are free slots."""
        if self.stopped or not self.lease.valid():
            return None
        if self._claiming:
            self._again = True
            return None
        free = self.max_in_flight - len(self.running)
        if free <= 0:
            return None
        self._claiming = True
        me = self.lease.incarnation
        margin = self.lease.margin
        d = self.run(lambda conn: sql.claim(conn, me, margin, free))
        d.addCallback(self._claimed, me)
        d.addErrback(lambda f: log.warn("cluster: claim failed: {error}", error=f.getErrorMessage()))

        def done(_: Any) -> None:
            self._claiming = False
            if self._again:
                self._again = False
                self.wake()

        d.addBoth(done)
        return d

    def _claimed(self, claims: list[sql.Claimed], me: uuid.UUID) -> None:
        for claimed in claims:
            self.claimed += 1
            if claimed.claims > 1:
                self.repeats += 1
                log.warn("cluster: possible repeat job {job_id}: delivery {id} to {destination} claimed again"
                         " (claim {claims}; it was in flight on a node that is gone)", job_id=claimed.job_id,
                         id=claimed.id, destination=claimed.destination, claims=claimed.claims)
            self.running[claimed.id] = (claimed, me, None)  # before _start: a finish at once pops it
            d = self._start(claimed, me)
            if claimed.id in self.running:
                self.running[claimed.id] = (claimed, me, d)
        if claims:
            self.wake()  # more printers may have heads

    def _start(self, claimed: sql.Claimed, me: uuid.UUID) -> Deferred:
        settings, policy = decode_settings(claimed.settings)
        dest = Destination.parse(claimed.destination)
        if claimed.data is not None:
            source: Deferred = succeed((claimed.data, None))
        else:
            path = os.path.join(self.files_dir, f"cluster-{claimed.id}-{claimed.fence}.job")
            source = self.run(lambda conn: _read_payload(conn, claimed.job_id, path))
        d = source.addCallback(self._send, claimed, dest, settings, policy)
        d.addErrback(lambda f: DeliveryResult("source_error", claimed.destination,
                                              message=f"cannot read the job's data: {f.getErrorMessage()}"))
        d.addCallback(self._finish, claimed, me)
        d.addErrback(lambda f: log.failure("cluster: delivery {id} crashed", f, id=claimed.id))
        d.addBoth(lambda _: self.running.pop(claimed.id, None))
        return d

    def _send(self, got: tuple[bytes | None, str | None], claimed: sql.Claimed, dest: Destination,
              settings: SendSettings, policy: RetryPolicy) -> Deferred:
        data, path = got
        if not self.lease.valid():
            return succeed(DeliveryResult(STOPPED, claimed.destination, message="fenced before connecting"))
        source: Source
        if data is not None:
            source, total = data, len(data)
        else:
            assert path is not None
            source, total = (lambda: open(path, "rb")), os.path.getsize(path)
        d = self.pool.deliver_here(dest, source, settings, claimed.job_id, total, policy)
        if path is not None:
            d.addBoth(_unlink_then, path)
        return d

    def _finish(self, result: DeliveryResult, claimed: sql.Claimed, me: uuid.UUID) -> Deferred | None:
        if result.outcome == STOPPED:
            if self.lease.fenced or me != self.lease.incarnation:
                return None  # fenced: the claim is the reaper's to requeue
            return self._until_answered(lambda conn: sql.release(conn, claimed, me), claimed, me, "release")
        stored = encode_result(result)
        d = self._until_answered(lambda conn: sql.finish(conn, claimed, me, result.ok, stored), claimed, me, "finish")

        def finished(ok: bool | None) -> None:
            if ok is None:
                return  # given up: this incarnation lost its lease (the reaper requeues the claim)
            if not ok:
                self.lost += 1
                log.warn("cluster: possible repeat job {job_id}: delivery {id} to {destination} ended {outcome}"
                         " but its claim was lost (taken over meanwhile); result not stored",
                         job_id=claimed.job_id, id=claimed.id, destination=claimed.destination,
                         outcome=result.outcome)
            else:
                self.wake()

        d.addCallback(finished)
        return d

    def _until_answered(self, fn: Callable[[Any], Any], claimed: sql.Claimed, me: uuid.UUID, what: str) -> Deferred:
        """
        Run the fenced C{fn} (a finish or release of C{claimed}) until the
        database answers, however often the connection drops: a claim left
        C{sending} under a live holder would block its printer cluster-wide.
        Fires with C{fn}'s answer, or None once this incarnation lost its
        lease or the worker stopped (the claim is then the reaper's, or the
        leave's, to requeue).  The claim keeps its slot meanwhile.
        """
        done: Deferred = Deferred()
        delay = [0.1]

        def attempt(first: bool = False) -> None:
            # The first try always (fenced in SQL: harmless when the claim is gone; it spares a repeat
            # when the reaper has not requeued it yet); again only while the lease holds.
            if not first and (self.stopped or self.lease.fenced or me != self.lease.incarnation):
                log.warn("cluster: gave up the {what} of delivery {id} (job {job_id}): this node lost its lease"
                         " or is stopping; the claim is requeued by its reaper", what=what, id=claimed.id,
                         job_id=claimed.job_id)
                done.callback(None)
                return
            self.run(fn).addCallbacks(done.callback, failed)

        def failed(f: Failure) -> None:
            log.warn("cluster: cannot {what} delivery {id}: {error}; trying again in {delay:.1f} s", what=what,
                     id=claimed.id, error=f.getErrorMessage(), delay=delay[0])
            self.reactor.callLater(delay[0], attempt)
            delay[0] = min(delay[0] * 2, self.max_retry_delay)

        attempt(first=True)
        return done

    def apply_cancels(self) -> Deferred | None:
        """
        Operators' cancels of deliveries this node sends (asked on any node,
        L{sql.ask_cancel_sending}): ended here as a local cancel ends them
        (a back-off wait or a pause ends C{cancelled}; an attempt in
        progress completes).  On each C{rawsvc_requests} NOTIFY and round.
        """
        me = self.lease.incarnation
        if self.stopped or me is None or not self.running:
            return None
        d = self.run(lambda conn: sql.cancels_asked(conn, me))

        def apply(job_ids: list[str]) -> None:
            for job_id in job_ids:
                if self.pool.cancel(job_id):
                    log.info("cluster: delivery of job {job_id} cancelled as asked", job_id=job_id)

        d.addCallbacks(apply, lambda f: log.warn("cluster: cannot read cancels asked: {error}",
                                                 error=f.getErrorMessage()))
        return d

    def requeue_orphans(self) -> Deferred | None:
        """
        Rows this incarnation holds C{sending} that its worker does not run
        (a claim committed whose reply the dropped connection lost) go back
        in line.  Asked every round; not while a claim is under way (its
        reply is not in yet).  The work connection is one thread, in order:
        claims asked after this run after it.
        """
        me = self.lease.incarnation
        if self.stopped or self._claiming or me is None or not self.lease.valid():
            return None
        keep = [i for i, (_, held_by, _) in self.running.items() if held_by == me]
        d = self.run(lambda conn: sql.requeue_orphans(conn, me, keep))

        def requeued(rows: list[tuple[int, str, str]]) -> None:
            if rows:
                log.warn("cluster: requeued {n} deliveries this node held without running them (a claim's"
                         " reply lost with the connection): {ids}", n=len(rows),
                         ids=", ".join(f"{job_id} ({dest})" for _, job_id, dest in rows))
                self.wake()

        d.addCallbacks(requeued, lambda f: log.warn("cluster: cannot requeue orphaned claims: {error}",
                                                    error=f.getErrorMessage()))
        return d

    def fence(self, why: str = "") -> int:
        """The lease is lost: abort this node's printer connections; claims stop (the lease says so)."""
        return int(self.pool.abort_all())

    def stop(self) -> None:
        self.stopped = True
        if self._woken is not None and self._woken.active():
            self._woken.cancel()


def _read_payload(conn: Any, job_id: str, path: str) -> tuple[None, str]:
    """On the work thread: the job's payload streamed from PostgreSQL into C{path}, a row at a time."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a job's data: owner-only
    os.fchmod(fd, 0o600)  # (a file left over from before keeps its mode through O_CREAT)
    with os.fdopen(fd, "wb") as f:
        for piece in sql.payload_pieces(conn, job_id):
            f.write(piece)
    return None, path


def _unlink_then(result: Any, path: str) -> Any:
    try:
        os.unlink(path)
    except OSError:
        pass
    return result


__all__ = ["ClusterDeliveries", "DeliveryWorker", "CancelledError"]
