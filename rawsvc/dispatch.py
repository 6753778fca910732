"""
The job sink: where triggers hand their jobs to flows.

It runs the job's flow, keeps the trigger's counters and a short in-memory
history for status pages, and removes spilled payload files once a job is
finished.  On stop it waits for jobs in flight.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.interfaces import IDeliveryWatcher, IDrainable, IHealth, IHoldWatcher, IJobHistory, IJobRates, IJobSink
from rawsvc.job import Job
from rawsvc.rates import JobRates
from rawsvc.states import JobState

if TYPE_CHECKING:
    from rawsvc.metrics import TriggerCounters

log = Logger(namespace="rawsvc.dispatch")

#: The states of a job whose own actions run (its deliveries may mark it waiting or held).
_ACTIVE = (JobState.RUNNING, JobState.WAITING, JobState.HELD)


@implementer(IJobSink, IJobHistory, IDrainable, IHealth, IDeliveryWatcher, IHoldWatcher, IJobRates)
class Dispatcher:
    """Runs jobs through their flows, directly (no durable spool)."""

    def __init__(self, flows: dict[str, Any], history: int = 1000) -> None:
        self.flows = flows
        self.running: dict[str, Job] = {}
        self.history: collections.deque[Job] = collections.deque(maxlen=history)
        self._in_flight: set[Deferred] = set()
        #: Set when the service begins to stop: what fails from then on is interrupted.
        self.stopping = False
        #: job_id -> its delivery's wait for a retry: destination, attempt, error, next_try.
        self.waiting: dict[str, dict[str, Any]] = {}
        #: Jobs finished per minute and ack latencies, for the console's charts.
        self.rates = JobRates()

    def submit(self, job: Job, flow_name: str, counters: TriggerCounters | None = None) -> Deferred:
        return self.dispatch(job, flow_name, counters)

    def dispatch(self, job: Job, flow_name: str, counters: TriggerCounters | None = None, again: bool = False) -> Deferred:
        """
        Run C{job}'s flow.  C{again}: the job ran before (retried by an
        operator): it is not counted as received again, and its earlier
        run leaves the history, so the job is listed once.
        """
        flow = self.flows[flow_name]
        self.running[job.job_id] = job
        if again:
            for old in [j for j in self.history if j.job_id == job.job_id]:
                self.history.remove(old)
        elif counters is not None:
            counters.jobs_received += 1
        job.state = "queued"
        started = time.monotonic()
        d = flow.run(job)
        if d.called and not d.paused and not isinstance(d.result, (Failure, Deferred)):
            # A flow that needed no asynchronous action has ended already:
            # its job is finished here, with no callbacks added.
            self._ended(d.result, job, counters, started)
            return d
        self._in_flight.add(d)
        return d.addCallbacks(self._ended_later, self._crashed, callbackArgs=(job, counters, started, d),
                              errbackArgs=(job, flow_name, counters, started, d))

    def _crashed(self, failure: Failure, job: Job, flow_name: str, counters: TriggerCounters | None,
                 started: float, d: Deferred) -> Job:
        log.failure("flow {flow} crashed for job {job_id}", failure, flow=flow_name, job_id=job.job_id)
        job.state = "failed"
        job.error = str(failure.value)
        return self._ended_later(job, job, counters, started, d)

    def _ended_later(self, result: Any, job: Job, counters: TriggerCounters | None, started: float,
                        d: Deferred) -> Any:
        self._in_flight.discard(d)
        return self._ended(result, job, counters, started)

    def _ended(self, result: Any, job: Job, counters: TriggerCounters | None, started: float) -> Any:
        self.running.pop(job.job_id, None)
        self.waiting.pop(job.job_id, None)
        self.history.append(job)
        if counters is not None:
            counters.flow_seconds.observe(time.monotonic() - started)
            if job.state == "done":
                counters.jobs_ok += 1
            elif job.state != "interrupted":  # interrupted: resumes later
                counters.jobs_failed += 1
        self.rates.finished(job.state, job.trigger)
        job.payload.discard()
        return result

    # IDeliveryWatcher: the destination pool tells about waiting deliveries ------------

    def delivery_waiting(self, job_id: str, destination: str, attempt: int, error: str, next_try: float) -> bool:
        """
        A running job's delivery waits to retry: the job is C{waiting}, its
        error the last attempt's.  Only a job whose actions run (C{running}
        or C{waiting}): a failed job's C{on_error} delivery that waits
        leaves it failed.  True when the job was marked.
        """
        job = self.running.get(job_id)
        if job is None or job.state not in _ACTIVE:
            return False
        job.state = "waiting"
        job.error = error
        self.waiting[job_id] = {"destination": destination, "attempt": attempt, "last_error": error,
                                "next_try": next_try}
        return True

    def delivery_held(self, job_id: str, destination: str, attempt: int, reason: str, next_try: float) -> bool:
        """
        A running job's printer is not ready (pre-flight): the job is
        C{held}, its error the reason (not for a failed job's C{on_error}
        delivery, see L{delivery_waiting}).  True when the job was marked.
        """
        job = self.running.get(job_id)
        if job is None or job.state not in _ACTIVE:
            return False
        job.state = "held"
        job.error = reason
        self.waiting[job_id] = {"destination": destination, "attempt": attempt, "last_error": reason,
                                "next_try": next_try, "held": reason}
        return True

    def delivery_retrying(self, job_id: str, destination: str, attempt: int) -> None:
        """The waiting (or held) job's delivery makes attempt C{attempt}: running again."""
        job = self.running.get(job_id)
        if job is None or self.waiting.pop(job_id, None) is None:
            return
        job.state = "running"
        job.error = None

    # IJobHistory ------------------------------------------------------------

    def recent(self, limit: int = 50) -> list[Job]:
        jobs = list(self.running.values()) + list(reversed(self.history))
        return jobs[:limit]

    def waiting_deliveries(self) -> dict[str, dict[str, Any]]:
        return {job_id: dict(w) for job_id, w in self.waiting.items()}

    # IDrainable -------------------------------------------------------------

    def begin_stop(self) -> None:
        """What fails from now on is interrupted by the stop (it resumes at the next start)."""
        self.stopping = True

    def drain(self) -> Deferred:
        """Fires once every job in flight has finished."""
        if not self._in_flight:
            return succeed(None)
        return DeferredList(list(self._in_flight), consumeErrors=True)

    def in_flight(self) -> int:
        return len(self.running)

    # IHealth ----------------------------------------------------------------

    def health(self, now: float | None = None) -> str | None:
        """An in-memory sink always takes jobs."""
        return None
