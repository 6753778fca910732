"""
The job store on PostgreSQL (C{[service] spool = "postgresql://..."}): an
L{IJobStore} whose jobs live in a database that IT already runs and backs
up, for one node now and the cluster spool next (see C{shared/CLUSTER.md}).

L{PgStore} is the reactor side: each method queues an operation for its
thread (L{rawsvc.spool.pg_worker}, one psycopg connection, group commit)
and returns a Deferred, or None for a background write (its failure is
logged; a background C{finish} that failed is kept and written again once
the database is back, at the latest at C{stop}).  The SQL is in
L{rawsvc.spool.pg_ops}, the schema in L{rawsvc.spool.pg_schema}.

When the connection is lost the store says why in C{error} (the sink then
refuses new jobs with that text and calls C{open} every second, which
connects again).  The password is never shown: the store names its
database with L{rawsvc.spool.pg_schema.describe}.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.interfaces import IJobStore
from rawsvc.spool import pg_ops
from rawsvc.spool.model import UNFINISHED, SpoolError
from rawsvc.spool.pg_schema import describe, is_pg_uri, migrate
from rawsvc.spool.pg_worker import OPEN, STOP, WORK, Op, PgWorker, Unavailable

log = Logger(namespace="rawsvc.spool.pg")

_STOPPED = "the spool is stopped"
_NOT_OPEN = "the spool is not open"
#: Seconds a connection attempt may take (unless the DSN says C{connect_timeout}).
CONNECT_TIMEOUT = 5
#: libpq settings the DSN may override: give up on a dead server within seconds, not hours.
DEFAULTS = {"connect_timeout": str(CONNECT_TIMEOUT), "keepalives": "1", "keepalives_idle": "10",
            "keepalives_interval": "3", "keepalives_count": "3", "application_name": "rawsvc"}


@implementer(IJobStore)
class PgStore:
    """
    See the module docstring and L{IJobStore}.  C{dsn}: a libpq URI or
    key=value string (a password may come from C{PGPASSWORD} or a
    C{.pgpass}); C{files_dir}: a folder of this node's for large payloads
    read back; C{node}: this node's name (the host name by default);
    C{clock}: the times recorded.
    """

    def __init__(self, dsn: str, reactor: Any, files_dir: str, node: str | None = None,
                 clock: Callable[[], float] = time.time, lease_ttl: float | None = None) -> None:
        self.dsn = dsn
        self.reactor = reactor
        self.files_dir = files_dir
        self.node = node or socket.gethostname()
        self.clock = clock
        self.where = describe(dsn)
        #: Why the store cannot take jobs (see L{IJobStore.error}); None while it can.
        self.error: str | None = None
        #: This process's incarnation while open (a row of C{rawsvc_nodes}).
        self.incarnation: uuid.UUID | None = None
        #: Cluster mode: the lease an incarnation registers with (None: one node, no expiry), and the
        #: monotonic time its registration was sent (the lease's first deadline counts from it).
        self.lease_ttl = lease_ttl
        self.registered_at: float | None = None
        self._open = False
        self._stopped = False
        self._waiters: list[Deferred] = []  # the callers of an open under way
        self._kept: dict[str, tuple] = {}  # background finishes that failed: job_id -> arguments
        self.worker = PgWorker(reactor, dsn, self._connect, self._leave)

    # Lifetime ---------------------------------------------------------------

    def open(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:  # one open at a time: later callers get its outcome too
            self._stopped = False
            self.worker.start()
            self.worker.call(OPEN, self._on_open).addCallbacks(self._opened, self._not_opened)
        return d

    def _on_open(self, conn: Any) -> str:
        """On the thread, with the connection (new or still good): make the payload folder."""
        os.makedirs(self.files_dir, mode=0o700, exist_ok=True)
        return self.where

    def _opened(self, where: str) -> None:
        self.error = None
        self._open = not self._stopped  # a stop asked meanwhile comes after this open, and wins
        if self._open:
            self._rewrite_kept()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(where)

    def _not_opened(self, failure: Failure) -> None:
        self._open = False
        self.error = str(failure.value)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(SpoolError(self.error))

    def _connect(self) -> Any:
        """On the thread: connect, migrate, register this incarnation; the ready connection."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        conn = psycopg.connect(make_conninfo("", **{**DEFAULTS, **conninfo_to_dict(self.dsn)}), autocommit=True)
        try:
            conn.execute("SET synchronous_commit = on")  # a commit that returned is durable
            found, now = migrate(conn)
            if found != now:
                log.info("spool: schema of {where} migrated from version {found} to {now}", where=self.where,
                         found=found, now=now)
            if self.incarnation is None:
                sent = time.monotonic()
                self.incarnation = pg_ops.register(conn, self.node, self.lease_ttl)
                self.registered_at = sent
        except BaseException:
            conn.close()
            raise
        return conn

    def _leave(self, conn: Any) -> None:
        if self.incarnation is not None:
            pg_ops.leave(conn, self.incarnation)
            self.incarnation = None

    def stop(self) -> Deferred:
        self._open = False
        self._stopped = True
        if not self.worker.running:
            self.incarnation = None
            return succeed(None)
        if self._kept:  # a last try for the final states a lost connection kept: connect again first
            self.worker.submit(Op(OPEN, self._on_open, lambda ok, value: None))
            kept, self._kept = self._kept, {}
            for args in kept.values():
                self.worker.submit(Op(WORK, _bound(pg_ops.finish, *args), self._background("final state", None)))
        return self.worker.call(STOP, lambda conn: None).addErrback(lambda f: None)

    # Writes -----------------------------------------------------------------

    def _closed(self) -> SpoolError | None:
        """Why an operation asked now fails at once; None when it goes to the thread (open, or opening)."""
        if self._open or (self._waiters and not self._stopped):  # opening: queued behind the open, as in SQLite
            return None
        if self._stopped:
            return SpoolError(_STOPPED)
        return SpoolError(self.error or _NOT_OPEN)

    def _work(self, fn: Callable[[Any], Any], background: bool = False, what: str = "write",
              keep: tuple | None = None) -> Deferred | None:
        """Queue C{fn(conn)}; its Deferred, or None for a background write (a failure logged)."""
        error = self._closed()
        if background:
            if error is not None:
                log.error("spool {what} not written: {error}", what=what, error=error)
                if keep is not None and not self._stopped:
                    self._kept[keep[0]] = keep
                return None
            self.worker.submit(Op(WORK, fn, self._background(what, keep)))
            return None
        if error is not None:
            return fail(error)
        d: Deferred = Deferred()

        def done(ok: bool, value: Any) -> None:
            if not ok:
                self._lost_connection(value)
            d.callback(value) if ok else d.errback(value)

        self.worker.submit(Op(WORK, fn, done))
        return d

    def _background(self, what: str, keep: tuple | None) -> Callable[[bool, Any], None]:
        def done(ok: bool, value: Any) -> None:
            if ok:
                return
            self._lost_connection(value)
            log.error("spool {what} not written: {error}", what=what, error=value)
            if keep is not None and not self._stopped:
                self._kept[keep[0]] = keep

        return done

    def _lost_connection(self, error: Any) -> None:
        """A result said the connection is gone: the store takes no new jobs until C{open} connects again."""
        if isinstance(error, Unavailable) and self._open:
            self._open = False
            self.error = str(error)
            log.error("spool unavailable: {error}", error=self.error)

    def _rewrite_kept(self) -> None:
        kept, self._kept = self._kept, {}
        for args in kept.values():
            self.worker.submit(Op(WORK, _bound(pg_ops.finish, *args), self._background("final state", args)))

    def add(self, job: Any, flow: str, variables: dict[str, str] | None = None) -> Deferred:
        snapshot = dict(variables if variables is not None else job.variables.snapshot())
        me, now = self.incarnation, self.clock()
        d = self._work(lambda conn: pg_ops.add(conn, me, job, flow, snapshot, now))
        assert d is not None
        return d

    def progress(self, job_id: str, action_index: int, variables: dict[str, str], delivery: tuple | None,
                 background: bool = False) -> Deferred | None:
        return self._work(_bound(pg_ops.progress, job_id, action_index, dict(variables), delivery, self.clock()),
                          background, "progress")

    def started(self, job_id: str, action_index: int, background: bool = False) -> Deferred | None:
        return self._work(_bound(pg_ops.started, job_id, action_index, self.clock()), background, "start")

    def finish(self, job_id: str, state: str, error: str | None, action_index: int, variables: dict[str, str],
               delivery: tuple | None, background: bool = False) -> Deferred | None:
        args = (job_id, state, error, action_index, dict(variables), delivery, self.clock())
        return self._work(_bound(pg_ops.finish, *args), background, "final state", keep=args)

    def waiting(self, job_id: str, attempt: int, error: str | None, next_try: float | None) -> None:
        self._work(_bound(pg_ops.waiting, job_id, attempt, error, next_try, self.clock()), True, "waiting")

    def flush(self) -> Deferred:
        if not self.worker.running:
            return succeed(None)
        d: Deferred = Deferred()
        self.worker.submit(Op(WORK, lambda conn: None, lambda ok, value: d.callback(None)))
        return d

    def requeue(self, job_id: str, action_index: int) -> Deferred:
        me, now = self.incarnation, self.clock()
        d = self._work(lambda conn: pg_ops.requeue(conn, me, job_id, action_index, now))
        assert d is not None
        return d

    def run(self, fn: Callable[[Any], Any], order: str | None = None) -> Deferred:
        """
        C{fn(conn)} in the thread's next group commit (cluster mode enqueues
        its deliveries so); with C{order}, after the batch's other operations,
        sorted by it.
        """
        error = self._closed()
        if error is not None:
            return fail(error)
        d: Deferred = Deferred()

        def done(ok: bool, value: Any) -> None:
            if not ok:
                self._lost_connection(value)
            d.callback(value) if ok else d.errback(value)

        self.worker.submit(Op(WORK, fn, done, order))
        return d

    # Reads ------------------------------------------------------------------

    def _read(self, fn: Callable[[Any], Any]) -> Deferred:
        d = self._work(fn, what="read")
        assert d is not None
        return d

    def load(self, states: tuple[str, ...] = UNFINISHED, job_id: str | None = None) -> Deferred:
        me, states = self.incarnation, tuple(states)
        return self._read(lambda conn: pg_ops.load(conn, me, self.files_dir, states, job_id))

    def query(self, states: Iterable[str] = (), triggers: Iterable[str] = (), limit: int | None = 50,
              prefix: str | None = None) -> Deferred:
        return self._read(_bound(pg_ops.query, tuple(states), tuple(triggers), limit, prefix))

    # Requests ---------------------------------------------------------------

    def request(self, job_id: str, action: str) -> Deferred:
        return self._read(_bound(pg_ops.request, job_id, action, self.clock()))

    def take_requests(self) -> Deferred:
        me = self.incarnation
        return self._read(lambda conn: pg_ops.take_requests(conn, me))

    def answer(self, request_id: int, ok: bool, result: str) -> Deferred:
        return self._read(_bound(pg_ops.answer, request_id, ok, result, self.clock()))

    def answer_of(self, request_id: int) -> Deferred:
        return self._read(_bound(pg_ops.answer_of, request_id))

    # Retention --------------------------------------------------------------

    def purge(self, max_age: float, max_bytes: int) -> Deferred:
        return self._read(_bound(pg_ops.purge, self.files_dir, max_age, max_bytes, self.clock()))


def _bound(fn: Callable[..., Any], *args: Any) -> Callable[[Any], Any]:
    """C{fn(conn, *args)} as an operation of one argument."""
    return lambda conn: fn(conn, *args)
