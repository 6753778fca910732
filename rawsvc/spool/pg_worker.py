"""
The thread behind L{rawsvc.spool.pg.PgStore}: one psycopg connection,
used by this thread only, and one queue of operations, run in the order
they were asked for (writes and reads mixed, so a read sees every write
asked before it).

The thread takes whatever is queued (up to L{MAX_BATCH}) and runs it in one
transaction, each operation inside a savepoint of its own: an operation
that fails (a duplicate job id) fails alone, the others commit together,
and every Deferred of the batch fires after that one C{COMMIT} (group
commit; the connection has C{synchronous_commit = on}, so a commit that
returned is durable).  When the connection is lost (the server stopped,
the network cut) the whole batch fails, the connection is dropped, and
every later operation fails at once with the reason until an L{OPEN}
operation connects again.

Results go back to the reactor thread with C{reactor.callFromThread}.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rawsvc.spool.model import SpoolError
from rawsvc.spool.pg_schema import describe, reason

log = Logger(namespace="rawsvc.spool.pg")

#: Operations run in one transaction at most.
MAX_BATCH = 256
#: Kinds of operation: run in the batch's transaction; alone, outside any transaction block (the
#: function opens its own: a maintenance step that must never hold one row while waiting for
#: another, as a batch's transaction would, or it could deadlock with a peer's); or control.
WORK, SOLO, OPEN, STOP = "work", "solo", "open", "stop"


class Unavailable(SpoolError):
    """The database is out of reach (never opened, or the connection was lost): nothing was written."""


@attrs.define(eq=False)
class Op:
    """
    One operation: C{fn(conn)} runs on the thread (for C{WORK}, inside a
    savepoint); its result or failure goes to C{on_done(ok, value)} on the
    reactor thread.
    """

    kind: str
    fn: Callable[[Any], Any]
    on_done: Callable[[bool, Any], None]
    #: Operations with a key run after the others of their batch, sorted by it (cluster mode's
    #: enqueues lock their destinations' rows in sorted order, so two nodes' batches cannot deadlock).
    order: str | None = None


class PgWorker:
    """
    The connection's thread.  C{connect()} (called on the thread by an
    L{OPEN} operation) returns a new, ready connection or raises;
    C{leave(conn)} runs at L{STOP} before the connection closes.
    """

    def __init__(self, reactor: Any, dsn: str, connect: Callable[[], Any], leave: Callable[[Any], None]) -> None:
        self.reactor = reactor
        self.where = describe(dsn)
        self._connect = connect
        self._leave = leave
        self._queue: queue.Queue[Op] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop_sent = False
        self.conn: Any = None
        #: Thread side: why the connection is not there (None while it is, or before the first open).
        self.lost: str | None = None
        #: Transactions committed (tests).
        self.batches = 0

    def start(self) -> None:
        """Start the thread unless it runs (a thread told to stop is done: a new one takes a new queue)."""
        if not self.running:
            self._queue = queue.Queue()
            self._stop_sent = False
            self._thread = threading.Thread(target=self._loop, args=(self._queue,), name="rawsvc-pg", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """The thread takes operations (started, and not told to stop)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop_sent

    def submit(self, op: Op) -> None:
        if op.kind == STOP:
            self._stop_sent = True
        self._queue.put(op)

    def call(self, kind: str, fn: Callable[[Any], Any]) -> Deferred:
        """Queue C{fn}; a Deferred of its result (a failure is a L{SpoolError})."""
        d: Deferred = Deferred()

        def done(ok: bool, value: Any) -> None:
            d.callback(value) if ok else d.errback(value)

        self.submit(Op(kind, fn, done))
        return d

    # The thread -------------------------------------------------------------

    def _loop(self, ops: queue.Queue[Op]) -> None:
        while True:
            batch = [ops.get()]
            while len(batch) < MAX_BATCH and batch[-1].kind == WORK:
                try:
                    batch.append(ops.get_nowait())
                except queue.Empty:
                    break
            work = [op for op in batch if op.kind == WORK]
            results = self._transact(work) if work else []
            control = batch[-1] if batch[-1].kind != WORK else None
            if control is not None:
                results.append(self._solo(control) if control.kind == SOLO else self._control(control))
            self.reactor.callFromThread(_deliver, results)
            if control is not None and control.kind == STOP:
                return

    def _solo(self, op: Op) -> tuple[Op, bool, Any]:
        """A L{SOLO} operation: C{fn(conn)} on the autocommit connection, in no transaction of ours."""
        conn = self.conn
        if conn is None:
            return op, False, Unavailable(self.lost or "the spool is not open")
        try:
            return op, True, op.fn(conn)
        except Exception as e:
            if not (conn.broken or conn.closed):
                return op, False, _as_spool_error(e)
            self._drop()
            self.lost = f"lost the connection to {self.where}: {reason(e)}"
            return op, False, Unavailable(self.lost)

    def _control(self, op: Op) -> tuple[Op, bool, Any]:
        if op.kind == OPEN:
            try:
                if self.conn is not None and not self.conn.broken and not self.conn.closed:
                    try:
                        self.conn.execute("SELECT 1")
                    except Exception:
                        self._drop()
                if self.conn is None:
                    self.conn = self._connect()
                    self.lost = None
                return op, True, op.fn(self.conn)
            except SpoolError as e:
                self._drop()
                self.lost = str(e)
                return op, False, e
            except Exception as e:
                self._drop()
                self.lost = f"cannot open the spool at {self.where}: {reason(e)}"
                return op, False, SpoolError(self.lost)
        # STOP: the last writes are in; say goodbye, close.
        if self.conn is not None and not self.conn.broken:
            try:
                self._leave(self.conn)
            except Exception as e:
                log.warn("spool: leaving {where} failed: {why}", where=self.where, why=reason(e))
        self._drop()
        self.lost = None
        return op, True, None

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def _transact(self, work: list[Op]) -> list[tuple[Op, bool, Any]]:
        error: SpoolError
        if self.conn is None:
            error = Unavailable(self.lost or "the spool is not open")
            return [(op, False, error) for op in work]
        results: list[tuple[Op, bool, Any]] = []
        conn = self.conn
        if any(op.order is not None for op in work):
            work = [op for op in work if op.order is None] + sorted(
                (op for op in work if op.order is not None), key=lambda op: str(op.order))
        try:
            with conn.transaction():
                for op in work:
                    try:
                        with conn.transaction():
                            results.append((op, True, op.fn(conn)))
                    except Exception as e:
                        if conn.broken or conn.closed:
                            raise
                        results.append((op, False, _as_spool_error(e)))
            self.batches += 1
            return results
        except Exception as e:
            if not (conn.broken or conn.closed):  # not the connection: a bug of ours, or a refused commit
                error = _as_spool_error(e)
            else:
                self._drop()
                self.lost = f"lost the connection to {self.where}: {reason(e)}"
                error = Unavailable(self.lost)
            return [(op, False, error) for op in work]


def _as_spool_error(e: BaseException) -> SpoolError:
    if isinstance(e, SpoolError):
        return e
    if isinstance(e, OSError):
        return SpoolError(f"cannot read a payload: {e.strerror or e}")
    return SpoolError(f"PostgreSQL refused the write: {reason(e)}")


def _deliver(results: list[tuple[Op, bool, Any]]) -> None:
    for op, ok, value in results:
        try:
            op.on_done(ok, value)
        except Exception:
            log.failure("spool: a result could not be handed back")
