"""
Wake-ups for the CLI's and the other nodes' requests on a PostgreSQL
spool: C{LISTEN rawsvc_requests} on a connection of its own, in a thread
of its own (a wait that lasts the service's life must not hold a thread
of the reactor's pool), and on each notification C{wake()} on the reactor.

The service still looks at the requests every second
(L{rawsvc.spool.service.POLL_INTERVAL}); the wake-up only makes the answer
come sooner.  While the database is out of reach the thread tries again
every L{RETRY} seconds, quietly: the store reports the outage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from rawsvc.spool.pg_browse import CHANNEL

log = Logger(namespace="rawsvc.spool.pg")

#: Seconds between looks at the stop flag while listening, and between connection attempts.
RETRY = 1.0


class RequestWakeups:
    """Call C{wake} on C{reactor} whenever a request is notified on the spool at C{dsn}."""

    def __init__(self, dsn: str, reactor: Any, wake: Callable[[], Any]) -> None:
        self.dsn = dsn
        self.reactor = reactor
        self.wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once the thread listens (tests wait for it).
        self.listening = threading.Event()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rawsvc-pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (within L{RETRY} seconds); never blocks."""
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        from rawsvc.spool.pg import DEFAULTS

        while not self._stop.is_set():
            try:
                params = {**DEFAULTS, "application_name": "rawsvc-requests", **conninfo_to_dict(self.dsn)}
                with psycopg.connect(make_conninfo("", **params), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        if list(conn.notifies(timeout=RETRY, stop_after=1)):
                            self.reactor.callFromThread(self._woken)
            except psycopg.Error:
                self.listening.clear()
                self._stop.wait(RETRY)
            except Exception:  # never a silent end of the thread
                log.failure("spool: request wake-ups failed")
                self._stop.wait(RETRY)
        self.listening.clear()

    def _woken(self) -> None:
        try:
            d = self.wake()
        except Exception:
            log.failure("spool: request wake-up failed")
            return
        if isinstance(d, Deferred):
            d.addErrback(lambda f: log.failure("spool: request wake-up failed", f))
