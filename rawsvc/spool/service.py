"""
L{SpoolService}: the spool's lifetime.  At start it opens the spool, applies
the CLI's pending requests and resumes the unfinished jobs before any new
job reaches a flow; while running it polls the requests every
L{POLL_INTERVAL} seconds (reopening a spool that failed; on PostgreSQL a
request's NOTIFY wakes the poll at once) and purges old
jobs every L{RETENTION_INTERVAL}; at stop it waits up to L{STOP_GRACE}
seconds for jobs in flight and commits every queued write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rawsvc.spool.check import SpoolDamaged
from rawsvc.spool.model import SpoolError

if TYPE_CHECKING:
    from rawsvc.spool.sink import SpoolSink

log = Logger(namespace="rawsvc.spool")

#: Seconds between looks at the CLI's requests table (and reopen attempts).
POLL_INTERVAL = 1.0
#: Seconds between retention passes.
RETENTION_INTERVAL = 300.0
#: Seconds the service waits at stop for jobs in flight before leaving them
#: (they are on disk and resume at the next start).
STOP_GRACE = 10.0


class SpoolService(Service):
    """The spool's lifetime: open and resume at start, poll, purge, flush at stop."""

    def __init__(self, sink: SpoolSink) -> None:
        self.setName("spool")
        self.sink = sink
        self._poll = LoopingCall(sink.poll_requests)
        self._retention = LoopingCall(sink.purge)
        self._poll.clock = self._retention.clock = sink.reactor
        self.stop_grace = STOP_GRACE
        self.started: Deferred | None = None
        self._last_error: str | None = None
        #: With a PostgreSQL spool: a request's NOTIFY wakes the poll at once.
        self.wakeups = request_wakeups(sink)

    def startService(self) -> None:
        super().startService()
        self.sink.stopping = self.sink.closed = False
        #: Fires once the spool is open and unfinished jobs are resumed.
        self.started = self.open_and_resume()
        self._poll.start(POLL_INTERVAL, now=False)
        if self.wakeups is not None:
            self.wakeups.start()
        self._retention.start(RETENTION_INTERVAL, now=True)

    @inlineCallbacks
    def open_and_resume(self):
        store = self.sink.store
        try:
            where = yield store.open()
        except SpoolDamaged as e:
            if str(e) != self._last_error:  # said once, not at every reopen attempt
                log.critical("spool: {advice}\nNew jobs are refused.", advice=e.advice())
            self._last_error = str(e)
            return
        except SpoolError as e:
            if str(e) != self._last_error:
                log.error("spool unavailable: {error}; new jobs are refused until it can be opened", error=e)
            self._last_error = str(e)
            return
        self._last_error = None
        log.info("spool open: {path}", path=where)
        # Requests first (a job cancelled while we were down must not resume),
        # then every unfinished job, before any new one reaches a flow.
        yield self.sink.apply_requests()
        try:
            unfinished = yield store.load()
        except SpoolError as e:
            log.error("spool: cannot read unfinished jobs: {error}", error=e)
            unfinished = []
        self.sink.resume_unfinished(unfinished)

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        sink = self.sink
        sink.stopping = True
        if self.wakeups is not None:
            self.wakeups.stop()
        for call in (self._poll, self._retention):
            if call.running:
                call.stop()
        waited: Deferred = Deferred()

        def settle(drained: bool) -> None:
            if not waited.called:
                waited.callback(drained)

        sink.drain().addBoth(lambda _: settle(True))
        timeout = sink.reactor.callLater(self.stop_grace, settle, False)
        if not (yield waited):
            log.warn("spool: {n} job(s) still running after {s} s; they resume at the next start",
                     n=len(sink.running), s=self.stop_grace)
        if timeout.active():
            timeout.cancel()
        yield sink.store.stop()  # every write queued so far is committed first
        sink.closed = True


def request_wakeups(sink: SpoolSink) -> Any:
    """The request wake-ups of a sink on a PostgreSQL store (L{rawsvc.spool.pg_listen}), else None."""
    from rawsvc.spool.pg import PgStore

    if not isinstance(sink.store, PgStore):
        return None
    from rawsvc.spool.pg_listen import RequestWakeups

    return RequestWakeups(sink.store.dsn, sink.reactor, sink.poll_requests)
