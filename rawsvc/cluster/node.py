"""
A cluster node (L{ClusterNode}, an C{IService}): its lease, its reaper,
its LISTEN thread and its claim loop, wired to the spool's store, the
destination pool and the job sink.

Every C{reap_interval} the node renews its lease, reaps dead incarnations
(their C{sending} deliveries go back to their place, their unfinished jobs
lose their owner), adopts ownerless jobs (resumed like a restart resumes
them), claims, and looks at the deliveries its flows wait for.  NOTIFY
wakes it sooner; the listener catches up with one such round after each
(re)connect, since notifications sent meanwhile are lost.

Three connections besides the spool's: the lease's (tiny statements only,
so a renewal never waits behind work), the work connection (claims,
finishes, payloads, adoption) and the listener's.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.cluster import sql
from rawsvc.cluster.lease import Lease
from rawsvc.cluster.pool import ClusterDeliveries, DeliveryWorker
from rawsvc.spool.pg_schema import describe, reason
from rawsvc.spool.pg_worker import OPEN, SOLO, STOP, WORK, Op, PgWorker, Unavailable

if TYPE_CHECKING:
    from rawsvc.client.destinations import DestinationPool
    from rawsvc.spool.pg import PgStore
    from rawsvc.spool.sink import SpoolSink

log = Logger(namespace="rawsvc.cluster")

#: Tries of the take-back of running jobs after a fence, a reap interval apart.
TAKE_BACK_TRIES = 5


def connect(dsn: str, application_name: str = "rawsvc") -> Any:
    """A new autocommit connection to C{dsn} with the spool's libpq defaults, named C{application_name}."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from rawsvc.spool.pg import DEFAULTS

    params = {**DEFAULTS, **conninfo_to_dict(dsn)}
    params["application_name"] = application_name
    conn = psycopg.connect(make_conninfo("", **params), autocommit=True)
    conn.execute("SET synchronous_commit = on")
    return conn


class Db:
    """One connection on a thread of its own (a L{PgWorker}); C{run(fn)} reconnects as needed."""

    def __init__(self, reactor: Any, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.worker = PgWorker(reactor, dsn, lambda: connect(dsn, f"rawsvc-{name}"), lambda conn: None)
        self.name = name
        self._open = False

    def run(self, fn: Callable[[Any], Any], solo: bool = False) -> Deferred:
        """
        C{fn(conn)} on the thread: in the next batch's transaction, or with
        C{solo} alone and outside any (it opens its own transactions).
        """
        if not self.worker.running:
            self.worker.start()
        if not self._open:
            self._open = True
            self.worker.submit(Op(OPEN, lambda conn: None, lambda ok, value: None))
        d: Deferred = Deferred()

        def done(ok: bool, value: Any) -> None:
            if not ok and isinstance(value, Unavailable):
                self._open = False  # the next call connects again
            d.callback(value) if ok else d.errback(value)

        self.worker.submit(Op(SOLO if solo else WORK, fn, done))
        return d

    def stop(self) -> Deferred | None:
        if self.worker.running:
            return self.worker.call(STOP, lambda conn: None).addErrback(lambda f: None)
        return None


class Listener:
    """
    LISTEN on the cluster's channels on a connection of its own, in a
    thread; each notification goes to C{wake(channel, payload)} on the
    reactor thread, and C{wake("", "")} after every (re)connect.
    """

    def __init__(self, reactor: Any, dsn: str, wake: Callable[[str, str], None]) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.wake = wake
        self.where = describe(dsn)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The listener's server process id while connected (tests terminate it).
        self.backend_pid: int | None = None
        self.connects = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rawsvc-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = connect(self.dsn, "rawsvc-listen")
                for channel in (sql.WORK_CHANNEL, sql.DONE_CHANNEL, sql.REQUESTS_CHANNEL):
                    conn.execute(f"LISTEN {channel}")
                self.backend_pid = conn.info.backend_pid
                self.connects += 1
                self.reactor.callFromThread(self.wake, "", "")  # catch up: what was sent meanwhile is lost
                while not self._stop.is_set():
                    for n in conn.notifies(timeout=0.5):
                        self.reactor.callFromThread(self.wake, n.channel, n.payload)
                    conn.execute("SELECT 1")  # finds a connection that died quietly
            except Exception as e:
                if not self._stop.is_set():
                    log.warn("cluster: listener lost its connection to {where}: {why}; polling meanwhile",
                             where=self.where, why=reason(e))
            finally:
                self.backend_pid = None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            self._stop.wait(1.0)


class ClusterNode(Service):
    """
    See the module docstring.  C{store}: the L{rawsvc.spool.pg.PgStore}
    (its incarnation is this node's); C{pool}: the destination pool (its
    C{cluster} is set here); C{sink}: the spool sink (adopted jobs resume
    there; may be None); C{settings}: the validated C{[cluster]} table.
    """

    def __init__(self, reactor: Any, dsn: str, store: PgStore, pool: DestinationPool, sink: SpoolSink | None,
                 settings: dict[str, Any],
                 files_dir: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.setName("cluster")
        self.reactor = reactor
        self.dsn = dsn
        self.store = store
        self.pool = pool
        self.sink = sink
        self.node = settings.get("node") or store.node
        self.ttl = float(settings["lease_ttl"])
        self.margin = float(settings["lease_margin"])
        self.interval = float(settings["reap_interval"])
        self.lease_db = Db(reactor, dsn, "lease")
        self.work_db = Db(reactor, dsn, "work")
        self.lease = Lease(reactor, self.lease_db.run, self.node, self.ttl, self.margin, self.interval, monotonic)
        self.lease.quiet = lambda: bool(store._stopped)  # the spool stopped: it left
        self.deliveries = ClusterDeliveries(store.run, self.work_db.run, reactor)
        self.worker = DeliveryWorker(reactor, pool, self.work_db.run, self.lease, files_dir)
        self.deliveries.on_enqueued = self.worker.wake
        self.listener = Listener(reactor, dsn, self._notified)
        self.lease.on_fenced.append(self._fenced)
        self.lease.on_joined.append(self._joined)
        pool.cluster = self.deliveries
        pool.gate = self.lease.check  # before every attempt: past the deadline, fence and do not connect
        #: Counters for /metrics: deliveries requeued from dead nodes, jobs adopted.
        self.takeovers = 0
        self.adopted = 0
        #: Deliveries by state, cluster-wide, at the last round (for /metrics).
        self.counts: dict[str, int] = {state: 0 for state in sql.STATES}
        self.db_error: str | None = None
        self._loop: LoopingCall | None = None
        self._waiting_store: LoopingCall | None = None
        self._round_busy = False

    # Lifetime ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.worker.stopped = False
        self._waiting_store = LoopingCall(self._store_ready)
        self._waiting_store.clock = self.reactor
        self._waiting_store.start(0.05).addErrback(self._crashed)

    def _store_ready(self) -> None:
        """Start the lease on the store's incarnation once the spool opened."""
        if self.store.incarnation is None:
            return
        assert self._waiting_store is not None
        self._waiting_store.stop()
        self.lease.start(self.store.incarnation, self.store.registered_at)
        self.listener.start()
        self._loop = LoopingCall(self.round)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(self._crashed)

    def _crashed(self, failure: Failure) -> None:
        log.failure("cluster: a loop crashed", failure)

    @inlineCallbacks
    def stopService(self):
        """After the spool and the pool stopped (services stop in reverse): leave, close the connections."""
        self.worker.stop()
        self.deliveries.stop()
        for loop in (self._loop, self._waiting_store):
            if loop is not None and loop.running:
                loop.stop()
        self.lease.stop()
        self.listener.stop()
        me = self.lease.incarnation
        if me is not None and not self.lease.fenced:
            try:
                yield self.lease_db.run(lambda conn: sql.leave(conn, me))
                log.info("cluster: node {node} left", node=self.node)
            except Exception as e:
                log.warn("cluster: could not mark node {node} left: {error}", node=self.node, error=e)
        for db in (self.lease_db, self.work_db):
            d = db.stop()
            if d is not None:
                yield d
        super().stopService()

    # Events -------------------------------------------------------------------

    def _notified(self, channel: str, payload: str) -> None:
        if channel == sql.DONE_CHANNEL:
            try:
                self.deliveries.done(int(payload))
            except ValueError:
                pass
        elif channel == sql.WORK_CHANNEL:
            self.worker.wake()
        elif channel == sql.REQUESTS_CHANNEL:
            self.worker.apply_cancels()
            if self.sink is not None:
                self.sink.poll_requests()
        else:  # (re)connected: catch up
            self.worker.wake()
            self.deliveries.poll()

    def _fenced(self, why: str) -> None:
        aborted = self.worker.fence(why)
        log.warn("cluster: fenced node {node}: aborted {n} printer connection(s)", node=self.node, n=aborted)

    def _joined(self, incarnation: uuid.UUID) -> None:
        old = self.store.incarnation
        if old != incarnation:
            self.store.incarnation = incarnation  # new jobs are this incarnation's
            running = list(self.sink.running) if self.sink is not None else []
            if old is not None and running:  # after a fence: take back the flows still running here
                self._take_back(old, incarnation, running, TAKE_BACK_TRIES)
        self.worker.wake()

    def _take_back(self, old: uuid.UUID, new: uuid.UUID, running: list[str], tries: int) -> None:
        """
        Alone, one job a transaction (in a batch's transaction it would hold
        the rows it took while it waits for the next one, which the spool's
        own batch may hold); tried again a reap interval later while C{new}
        is still this node's incarnation (taking a job back twice is harmless).
        """
        if self.worker.stopped or self.lease.incarnation != new or self.lease.fenced:
            return  # stopping, or fenced again meanwhile (the next join takes them back)

        def failed(f: Failure) -> None:
            again = tries > 1 and self.lease.incarnation == new and not self.lease.fenced and not self.worker.stopped
            log.warn("cluster: cannot take back running jobs: {error}{then}", error=f.getErrorMessage(),
                     then=f"; trying again in {self.interval:g} s" if again else "")
            if again:
                self.reactor.callLater(self.interval, self._take_back, old, new, running, tries - 1)

        taking = self.work_db.run(lambda conn: sql.take_back(conn, old, new, running), solo=True)
        taking.addCallbacks(
            lambda n: log.info("cluster: took back {n} running job(s) of the fenced incarnation", n=n), failed)

    # The round ----------------------------------------------------------------

    @inlineCallbacks
    def round(self):
        """Reap, requeue, adopt, claim, poll: what a NOTIFY would have started, in case it was lost."""
        if self._round_busy:
            return
        self._round_busy = True
        try:
            if self.lease.valid():
                yield self.work_db.run(sql.reap)
                requeued = yield self.work_db.run(sql.requeue_stale)
                if requeued:
                    self.takeovers += len(requeued)
                    log.warn("cluster: takeover: requeued {n} deliveries of dead incarnations: {ids}",
                             n=len(requeued), ids=", ".join(f"{job_id} ({dest})" for _, job_id, dest in requeued))
                yield self._adopt()
                yield self.worker.requeue_orphans()
                yield self.worker.apply_cancels()
            self.worker.wake()
            yield self.deliveries.poll()
            self.counts = yield self.work_db.run(sql.counts)
            self.db_error = None
        except Exception as e:
            self.db_error = str(e)
            log.warn("cluster: round failed: {error}", error=e)
        finally:
            self._round_busy = False

    @inlineCallbacks
    def _adopt(self):
        me = self.lease.incarnation
        if self.sink is None or me is None or self.sink.stopping or not self.sink.ready:
            return
        job_ids = yield self.work_db.run(lambda conn: sql.adopt(conn, me))
        for job_id in job_ids:
            rows = yield self.store.load(job_id=job_id)
            for stored in rows:
                self.adopted += 1
                self.takeovers += 1
                log.warn("cluster: takeover: adopted job {job_id} at action {index}", job_id=job_id,
                         index=stored.action_index)
                self.sink._resume(stored)

    # Status ---------------------------------------------------------------------

    def health(self) -> str | None:
        """Why the node is unhealthy (lease lost or fenced, database down), or None."""
        if self.lease.incarnation is None:
            return "cluster: not registered (database out of reach?)"
        if not self.lease.valid():
            return "cluster: lease lost (fenced)"
        if self.db_error:
            return f"cluster: {self.db_error}"
        return None

    def stats(self) -> dict[str, Any]:
        return {"node": self.node, "incarnation": str(self.lease.incarnation), "lease_age": self.lease.age(),
                "lease_valid": self.lease.valid(), "takeovers": self.takeovers, "adopted": self.adopted,
                "claimed": self.worker.claimed, "repeats": self.worker.repeats, "lost": self.worker.lost,
                "deliveries": dict(self.counts), "fences": self.lease.fences}


__all__ = ["ClusterNode", "Db", "Listener", "connect", "os"]
