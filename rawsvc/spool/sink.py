"""
L{SpoolSink}: the job sink with the durable spool in front of the flows.

C{submit} stores the job (payload and metadata, fsynced in a group commit)
before its flow starts, so the flow's C{reply} (the sender's
acknowledgement) is only ever sent for a job on disk.  A job the spool
cannot store is refused: the Deferred fires with the job in state
C{refused} and C{job.error} = C{"spool unavailable: ..."}; its flow never
runs.

After each action but the last the job's progress (the next action's
index and its variables, including saved replies) is recorded, not
fsynced, in the background (within one commit only a job's latest
progress is written); the final state is recorded durably.  At start, unfinished jobs are resumed in their
original order, from the first action that had not completed, before any
new job: delivery is at-least-once, and C{${job_id}} lets a receiver spot
a repeat.  A resumed job has no sender to answer: its C{reply} actions are
skipped (logged), so the rest of the flow runs.

Resuming, retrying and cancelling stored jobs is in L{rawsvc.spool.resume}
(mixed into L{SpoolSink}); the spool's lifetime (open, resume, poll the
CLI's requests, retention, stop) in L{rawsvc.spool.service}.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.dispatch import Dispatcher
from rawsvc.errors import ActionError
from rawsvc.flow import Flow
from rawsvc.interfaces import (
    IAction, IDeliveryReport, IDestinationPool, IHoldStore, IJobControl, IJobSink, IJobStore, ITrigger,
)
from rawsvc.job import Job
from rawsvc.spool.model import SpoolError
from rawsvc.spool.resume import SenderGone, SpoolOperations, SpoolPayload
from rawsvc.spool.service import POLL_INTERVAL, RETENTION_INTERVAL, STOP_GRACE, SpoolService
from rawsvc.wiring import counters_of, tell_recovered

if TYPE_CHECKING:
    from rawsvc.metrics import TriggerCounters

__all__ = [
    "POLL_INTERVAL", "RETENTION_INTERVAL", "STOP_GRACE", "SenderGone", "SpoolPayload", "SpoolService", "SpoolSink",
]

log = Logger(namespace="rawsvc.spool")

#: Seconds after a job was refused (not stored) during which the sink
#: reports itself unhealthy (C{/healthz} 503), unless a job has been stored since.
REFUSED_WINDOW = 60.0


@implementer(IAction)
class _Recorded:
    """Wraps one action of a flow: checks for a cancel first, records progress after."""

    def __init__(self, action: IAction, sink: "SpoolSink", last: bool) -> None:
        self.action = action
        self.type_name = action.type_name
        self.sink = sink
        self.last = last

    def run(self, job: Job) -> Any:
        """The action's own result: a plain value keeps the flow in its plain loop."""
        if job.job_id in self.sink._cancel:
            raise ActionError("cancelled by an operator")
        result = self.action.run(job)
        if isinstance(result, Deferred):
            return result.addCallback(self._done, job)
        if isinstance(result, Failure):
            return result
        return self._done(result, job)

    def _done(self, result: Any, job: Job) -> Any:
        delivery = _delivery(result)
        if delivery is not None:
            self.sink._deliveries[job.job_id] = delivery
        if not self.last:
            index = int(job.variables["action_index"]) + 1
            self.sink.store.progress(job.job_id, index, job.variables.snapshot(), delivery, background=True)
        return result


def _delivery(result: Any) -> tuple[str, int] | None:
    """C{(destination, bytes written)} from an action result that reports a delivery (send_tcp's)."""
    if IDeliveryReport.providedBy(result):
        return str(result.destination), int(result.written)
    return None


@implementer(IJobSink, IJobControl)
class SpoolSink(Dispatcher, SpoolOperations):
    """A L{Dispatcher} whose jobs are stored before their flows run."""

    def __init__(self, flows: dict[str, Flow], store: IJobStore, reactor: Any, history: int = 1000,
                 retention_days: float = 7.0, retention_mb: float = 1024.0,
                 triggers: Mapping[str, ITrigger] | None = None, pool: IDestinationPool | None = None,
                 stop_grace: float = STOP_GRACE) -> None:
        self.plain_flows = flows
        super().__init__({name: self._wrap(flow) for name, flow in flows.items()}, history)
        self.store = store
        self.reactor = reactor
        self.retention_days = retention_days
        self.retention_mb = retention_mb
        #: The config's triggers, by name (filled by the loader once they are built).
        self.triggers: Mapping[str, ITrigger] = triggers if triggers is not None else {}
        self.service = SpoolService(self)
        self.service.stop_grace = min(STOP_GRACE, stop_grace)
        self.ready = False
        self._cancel: set[str] = set()
        self._start_at: dict[str, int] = {}
        self._deliveries: dict[str, tuple[str, int]] = {}
        self._held: dict[str, Deferred] = {}
        self._polling = False
        self.closed = False
        #: Cluster mode: this node's delivery worker also carries out deliveries of
        #: jobs whose flows run on other nodes; their waits are written to the shared store.
        self.shared_deliveries = False
        #: (when, why) of the last job refused since the last one stored; /healthz reads it.
        self.last_refusal: tuple[float, str] | None = None
        #: The destination pool, when the config has one (cancel and retry reach into its queues).
        self.pool = pool
        self._again: set[str] = set()
        #: job_id -> the Deferred of L{submit_stored}, fired once the job is stored or refused.
        self._on_stored: dict[str, Deferred] = {}

    def counters_for(self, trigger: str) -> TriggerCounters | None:
        """The counters of a stored job's trigger (a resumed job counts there)."""
        return counters_of(self.triggers, trigger)

    def on_recovered(self, job: Job) -> None:
        """A job run again by an operator finished done: its trigger may clear an error (a printer)."""
        tell_recovered(self.triggers, job)

    def _wrap(self, flow: Flow) -> Any:
        n = len(flow.actions)
        wrapped = Flow(flow.name, [_Recorded(a, self, i == n - 1) for i, a in enumerate(flow.actions)], flow.on_error,
                       log_jobs=flow.log_jobs)
        return _ResumableFlow(wrapped, self)

    # IJobSink ---------------------------------------------------------------

    def submit(self, job: Job, flow_name: str, counters: TriggerCounters | None = None) -> Deferred:
        # While the service stops, a job a client finishes sending is still
        # stored (its flow is then interrupted and resumes at the next start):
        # refused, a sender that already wrote its last byte (CUPS) would
        # count it printed.  Only a closed or failed spool refuses.
        if self.closed or self.store.error:
            return succeed(self._refuse(job, counters, "the spool is closed" if self.closed else self.store.error))
        # The writer thread reads the job's variables and payload: nothing
        # touches them until its flow starts, once it is stored.
        d = self.store.add(job, flow_name)
        self._in_flight.add(d)
        return d.addCallbacks(self._stored, self._not_stored, (job, flow_name, counters, d), None, (job, counters, d))

    def submit_stored(self, job: Job, flow_name: str, counters: TriggerCounters | None = None) -> tuple[Deferred, Deferred]:
        """
        L{submit} C{job}; and a Deferred that fires with C{job} once it is
        stored (before its flow runs), or fails with L{SpoolError} when the
        spool refused it.  The second Deferred is L{submit}'s: the job once
        its flow ended.
        """
        stored: Deferred = Deferred()
        self._on_stored[job.job_id] = stored
        finished = self.submit(job, flow_name, counters)
        return stored, finished

    def _tell_stored(self, job: Job, refused: str | None = None) -> None:
        d = self._on_stored.pop(job.job_id, None)
        if d is not None:
            if refused is None:
                d.callback(job)
            else:
                d.errback(SpoolError(refused))

    def _stored(self, path: str | None, job: Job, flow_name: str, counters: TriggerCounters | None, d: Deferred) -> Deferred:
        self._in_flight.discard(d)
        self._tell_stored(job)
        self.last_refusal = None  # jobs are stored again
        self.rates.acked(time.time() - job.received_at)  # the sender may be acknowledged now
        if path is not None:
            job.payload.discard()  # the temporary file, if any; the spool has its copy
            job.payload = SpoolPayload.from_file(path)
        if not self.ready:  # unfinished jobs from the last run go first
            held: Deferred = Deferred()
            self._held[job.job_id] = held
            return held.addCallback(lambda _: self._run(job, flow_name, counters, 0, True))
        return self._run(job, flow_name, counters, 0, True)

    def _not_stored(self, failure: Failure, job: Job, counters: TriggerCounters | None, d: Deferred) -> Job:
        self._in_flight.discard(d)
        return self._refuse(job, counters, failure.getErrorMessage())

    def _refuse(self, job: Job, counters: TriggerCounters | None, reason: str | None) -> Job:
        job.state = "refused"
        job.error = error = f"spool unavailable: {reason}"
        job.finished_at = now = time.time()
        self.last_refusal = (now, error)
        if counters is not None:
            counters.jobs_refused += 1
        log.error("job {job_id} from trigger {trigger} refused: {error}", job_id=job.job_id,
                  trigger=job.trigger, error=job.error)
        job.payload.discard()
        self.history.append(job)
        self._tell_stored(job, error)
        return job

    def _run(self, job: Job, flow_name: str, counters: TriggerCounters | None, start_at: int, fresh: bool = False) -> Deferred:
        """Run the stored job's flow from action C{start_at}; record how it ends."""
        if not fresh:  # a new job was stored as running, attempt 1, at action 0
            self._start_at[job.job_id] = start_at
            self.store.started(job.job_id, start_at, background=True)
            self._again.add(job.job_id)
        return self.dispatch(job, flow_name, counters, not fresh).addCallback(self._finished)

    def delivery_waiting(self, job_id: str, destination: str, attempt: int, error: str, next_try: float) -> bool:
        marked = Dispatcher.delivery_waiting(self, job_id, destination, attempt, error, next_try)
        if (marked or self._remote(job_id)) and not self.closed:
            self.store.waiting(job_id, attempt, error, next_try)
        return marked

    def _remote(self, job_id: str) -> bool:
        """A job another node runs, whose delivery this node carries out (cluster mode)."""
        return self.shared_deliveries and job_id not in self.running

    def delivery_held(self, job_id: str, destination: str, attempt: int, reason: str, next_try: float) -> bool:
        # Unfinished in the spool: a restart resumes it.  A store without holds keeps it waiting.
        marked = Dispatcher.delivery_held(self, job_id, destination, attempt, reason, next_try)
        if (marked or self._remote(job_id)) and not self.closed:
            if IHoldStore.providedBy(self.store):
                self.store.held(job_id, attempt, reason, next_try)
            else:
                self.store.waiting(job_id, attempt, f"held: {reason}", next_try)
        return marked

    def delivery_retrying(self, job_id: str, destination: str, attempt: int) -> None:
        was_waiting = job_id in self.waiting or self._remote(job_id)  # remote: the store's update is conditional
        Dispatcher.delivery_retrying(self, job_id, destination, attempt)
        if was_waiting and not self.closed:
            self.store.waiting(job_id, attempt, None, None)

    def _finished(self, job: Job) -> Job:
        self._start_at.pop(job.job_id, None)
        again = job.job_id in self._again
        self._again.discard(job.job_id)
        delivery = self._deliveries.pop(job.job_id, None)
        if job.job_id in self._cancel:
            self._cancel.discard(job.job_id)
            if job.state != "done":
                job.state = "cancelled"
        if self.stopping and job.state not in ("done", "cancelled"):
            # Most likely failed because the service is stopping: leave it
            # unfinished on disk, it resumes at the next start.  It is
            # interrupted, not failed, so that its sender is not told it
            # failed (a NAK would make it send the job again: twice printed).
            log.info("job {job_id} interrupted by the stop; it resumes at the next start", job_id=job.job_id)
            job.state = "interrupted"
            return job
        index = int(job.variables.get("action_index", "0"))
        if job.state == "done":
            index += 1
        self.store.finish(job.job_id, job.state, job.error, index, job.variables.snapshot(), delivery, background=True)
        if again and job.state == "done":
            self.on_recovered(job)
        return job

    def health(self, now: float | None = None) -> str | None:
        """
        Why jobs are refused now: the store cannot store them, or a job was
        refused within L{REFUSED_WINDOW} seconds and none stored since.
        """
        if self.store.error:
            return f"spool unavailable: {self.store.error}"
        if self.last_refusal is None:
            return None
        refused_at, why = self.last_refusal
        age = (time.time() if now is None else now) - refused_at
        if age >= REFUSED_WINDOW:
            return None
        return f"{why} (a job was refused {age:.0f} s ago; none stored since)"

    def drain_writes(self) -> Deferred:
        """Fires once every write queued so far is committed (background writes fail in the log)."""
        return self.store.flush()

    def drain(self) -> Deferred:
        """
        Fires once every job in flight and every write queued so far is done;
        at once when the spool is closed (what still runs resumes at the next start).
        """
        if self.closed:
            return succeed(None)
        return DeferredList(list(self._in_flight) + [self.store.flush()], consumeErrors=True)


class _ResumableFlow:
    """A wrapped flow that starts at the action the sink says."""

    def __init__(self, flow: Flow, sink: SpoolSink) -> None:
        self.flow = flow
        self.name = flow.name
        self.sink = sink

    def run(self, job: Job, start_at: int = 0) -> Deferred:
        return self.flow.run(job, self.sink._start_at.get(job.job_id, start_at))
