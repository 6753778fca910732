"""
The job sink: where triggers hand their jobs to flows.

It runs the job's flow, keeps the trigger's counters and a short in-memory
history for status pages, and removes spilled payload files once a job is
finished.  On stop it waits for jobs in flight.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc.interfaces import IJobSink
from rawsvc.job import Job

log = Logger(namespace="rawsvc.dispatch")


@implementer(IJobSink)
class Dispatcher:
    """Runs jobs through their flows, directly (no durable spool)."""

    def __init__(self, flows: dict[str, Any], history: int = 1000) -> None:
        self.flows = flows
        self.running: dict[str, Job] = {}
        self.history: collections.deque[Job] = collections.deque(maxlen=history)
        self._in_flight: set[Deferred] = set()

    def submit(self, job: Job, flow_name: str, counters: Any = None) -> Deferred:
        flow = self.flows[flow_name]
        self.running[job.job_id] = job
        if counters is not None:
            counters.jobs_received += 1
        job.state = "queued"
        started = time.monotonic()
        d = flow.run(job)
        self._in_flight.add(d)

        def finished(result: Any) -> Any:
            self._in_flight.discard(d)
            self.running.pop(job.job_id, None)
            self.history.append(job)
            if counters is not None:
                counters.flow_seconds.observe(time.monotonic() - started)
                if job.state == "done":
                    counters.jobs_ok += 1
                elif job.state != "interrupted":  # interrupted: resumes later
                    counters.jobs_failed += 1
            job.payload.discard()
            return result

        def crashed(failure):
            log.failure("flow {flow} crashed for job {job_id}", failure, flow=flow_name, job_id=job.job_id)
            job.state = "failed"
            job.error = str(failure.value)
            return job

        return d.addErrback(crashed).addBoth(finished)

    def recent(self, limit: int = 50) -> list[Job]:
        jobs = list(self.running.values()) + list(reversed(self.history))
        return jobs[:limit]

    def drain(self) -> Deferred:
        """Fires once every job in flight has finished."""
        if not self._in_flight:
            return succeed(None)
        return DeferredList(list(self._in_flight), consumeErrors=True)
