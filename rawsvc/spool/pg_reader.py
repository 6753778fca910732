"""
The service's own reads of the PostgreSQL spool for people (the console,
C{/jobs}, the manhole), cluster-wide: every node shows every job.

L{PgReader} runs the functions of L{rawsvc.spool.pg_browse} on a thread
pool (never the reactor) with connections of its own, apart from the
store's writer connection: a slow page never delays a job's commit.  At
most L{IDLE} connections are kept between reads; a connection that failed
is dropped, and the next read connects again.  A read that fails for the
database fails with L{SpoolError} naming it (never its password).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from rawsvc.spool.model import SpoolError
from rawsvc.spool.pg_schema import describe, reason

#: Connections kept open between reads.
IDLE = 2


class PgReader:
    """Reads of the spool at C{dsn}, on C{threadpool}."""

    def __init__(self, dsn: str, reactor: Any, threadpool: Any) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self.reactor = reactor
        self.threadpool = threadpool
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """C{f(conn, *args)} on a thread; its result."""
        return deferToThreadPool(self.reactor, self.threadpool, self.call, f, *args)

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        """On a thread: C{f(conn, *args)} with a connection of the reader's."""
        import psycopg

        from rawsvc.spool import pg_browse

        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = pg_browse.connect(self.dsn)
        try:
            result = f(conn, *args)
        except psycopg.Error as e:
            conn.close()
            raise SpoolError(f"cannot read the spool at {self.where}: {reason(e)}") from None
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < IDLE:
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return result

    def close(self) -> None:
        """Close the idle connections (a later read connects again)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
