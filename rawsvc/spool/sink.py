"""
L{SpoolSink}: the job sink with the durable spool in front of the flows.

C{submit} stores the job (payload and metadata, fsynced in a group commit)
before its flow starts, so the flow's C{reply} (the sender's
acknowledgement) is only ever sent for a job on disk.  A job the spool
cannot store is refused: the Deferred fires with the job in state
C{refused} and C{job.error} = C{"spool unavailable: ..."}; its flow never
runs.

After each action the job's progress (the next action's index and its
variables, including saved replies) is recorded, not fsynced; the final
state is recorded durably.  At start, unfinished jobs are resumed in their
original order, from the first action that had not completed, before any
new job: delivery is at-least-once, and C{${job_id}} lets a receiver spot
a repeat.  A resumed job has no sender to answer: its C{reply} actions are
skipped (logged), so the rest of the flow runs.

The CLI (C{rawsvc retry}/C{cancel}) writes rows into the C{requests}
table; the service polls it every L{POLL_INTERVAL} seconds (and at start).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.dispatch import Dispatcher
from rawsvc.errors import ActionError
from rawsvc.flow import Flow
from rawsvc.interfaces import IAction, IJobSink, IReplyChannel
from rawsvc.job import Job, Payload
from rawsvc.spool.store import FINISHED, SpoolError, Store, StoredJob

log = Logger(namespace="rawsvc.spool")

#: Seconds between looks at the CLI's requests table (and reopen attempts).
POLL_INTERVAL = 1.0
#: Seconds between retention passes.
RETENTION_INTERVAL = 300.0
#: Seconds the service waits at stop for jobs in flight before leaving them
#: (they are on disk and resume at the next start).
STOP_GRACE = 10.0


class SpoolPayload(Payload):
    """A payload in the spool: its file stays until retention purges the job."""

    def discard(self) -> None:
        self.close()


@implementer(IReplyChannel)
class SenderGone:
    """The reply channel of a resumed job: replies are skipped, and logged."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def reply(self, data: bytes) -> Deferred:
        log.info("job {job_id} resumed from the spool: reply skipped ({n} bytes), its sender is gone",
                 job_id=self.job_id, n=len(data))
        return succeed(0)


@implementer(IAction)
class _Recorded:
    """Wraps one action of a flow: checks for a cancel first, records progress after."""

    def __init__(self, action: IAction, sink: "SpoolSink", last: bool) -> None:
        self.action = action
        self.type_name = getattr(action, "type_name", "?")
        self.sink = sink
        self.last = last

    def run(self, job: Job) -> Deferred:
        if job.job_id in self.sink._cancel:
            raise ActionError("cancelled by an operator")
        d = maybeDeferred(self.action.run, job)
        return d.addCallback(self._done, job)

    def _done(self, result: Any, job: Job) -> Any:
        delivery = _delivery(result)
        if delivery is not None:
            self.sink._deliveries[job.job_id] = delivery
        if not self.last:
            index = int(job.variables["action_index"]) + 1
            self.sink._record(self.sink.store.progress(job.job_id, index, job.variables.snapshot(), delivery))
        return result


def _delivery(result: Any) -> tuple[str, int] | None:
    """C{(destination, bytes written)} from a send_tcp-like action result."""
    dest = getattr(result, "destination", None)
    written = getattr(result, "written", None)
    if isinstance(dest, str) and isinstance(written, int):
        return dest, written
    return None


@implementer(IJobSink)
class SpoolSink(Dispatcher):
    """A L{Dispatcher} whose jobs are stored before their flows run."""

    def __init__(self, flows: dict[str, Flow], store: Store, reactor: Any, history: int = 1000,
                 retention_days: float = 7.0, retention_mb: float = 1024.0,
                 counters_for: Any = None) -> None:
        self.plain_flows = flows
        super().__init__({name: self._wrap(flow) for name, flow in flows.items()}, history)
        self.store = store
        self.reactor = reactor
        self.retention_days = retention_days
        self.retention_mb = retention_mb
        self.counters_for = counters_for or (lambda trigger: None)
        self.service = SpoolService(self)
        self.stopping = False
        self.ready = False
        self._cancel: set[str] = set()
        self._start_at: dict[str, int] = {}
        self._deliveries: dict[str, tuple[str, int]] = {}
        self._writes: set[Deferred] = set()
        self._held: dict[str, Deferred] = {}
        self._polling = False
        self.closed = False

    @classmethod
    def for_service(cls, service: Any) -> "SpoolSink":
        """The sink for a L{rawsvc.service.RawService} (C{[service] spool = true})."""
        opts = service.config.service
        triggers = service.triggers
        sink = cls(
            service.flows,
            Store(service.context.state_dir, service.reactor),
            service.reactor,
            opts.get("history", 1000),
            opts.get("retention_days", 7.0),
            opts.get("retention_mb", 1024.0),
            lambda name: getattr(triggers.get(name), "counters", None),
        )
        service.context.components["spool"] = sink.service
        return sink

    def _wrap(self, flow: Flow) -> Any:
        n = len(flow.actions)
        wrapped = Flow(flow.name, [_Recorded(a, self, i == n - 1) for i, a in enumerate(flow.actions)], flow.on_error)
        return _ResumableFlow(wrapped, self)

    # IJobSink ---------------------------------------------------------------

    def submit(self, job: Job, flow_name: str, counters: Any = None) -> Deferred:
        if self.stopping or self.store.error:
            return succeed(self._refuse(job, counters, "the service is stopping" if self.stopping else self.store.error))
        variables = job.variables.snapshot()
        d = self.store.add(job, flow_name, variables)
        self._in_flight.add(d)

        def stored(path: str | None) -> Deferred:
            self._in_flight.discard(d)
            if path is not None:
                job.payload.discard()  # the temporary file, if any; the spool has its copy
                job.payload = SpoolPayload.from_file(path)
            if not self.ready:  # unfinished jobs from the last run go first
                held: Deferred = Deferred()
                self._held[job.job_id] = held
                return held.addCallback(lambda _: self._run(job, flow_name, counters, 0, True))
            return self._run(job, flow_name, counters, 0, True)

        def not_stored(failure: Any) -> Job:
            self._in_flight.discard(d)
            return self._refuse(job, counters, failure.getErrorMessage())

        return d.addCallbacks(stored, not_stored)

    def _refuse(self, job: Job, counters: Any, reason: str | None) -> Job:
        job.state = "refused"
        job.error = f"spool unavailable: {reason}"
        job.finished_at = time.time()
        if counters is not None:
            counters.jobs_refused += 1
        log.error("job {job_id} from trigger {trigger} refused: {error}", job_id=job.job_id,
                  trigger=job.trigger, error=job.error)
        job.payload.discard()
        self.history.append(job)
        return job

    def _run(self, job: Job, flow_name: str, counters: Any, start_at: int, fresh: bool = False) -> Deferred:
        """Run the stored job's flow from action C{start_at}; record how it ends."""
        self._start_at[job.job_id] = start_at
        if not fresh:  # a new job was stored as running, attempt 1
            self._record(self.store.started(job.job_id, start_at))
        return Dispatcher.submit(self, job, flow_name, counters).addCallback(self._finished)

    def _finished(self, job: Job) -> Job:
        self._start_at.pop(job.job_id, None)
        delivery = self._deliveries.pop(job.job_id, None)
        if job.job_id in self._cancel:
            self._cancel.discard(job.job_id)
            if job.state != "done":
                job.state = "cancelled"
        if self.stopping and job.state != "done":
            # Most likely failed because the service is stopping: leave it
            # unfinished on disk, it resumes at the next start.
            log.info("job {job_id} interrupted by the stop; it resumes at the next start", job_id=job.job_id)
            return job
        index = int(job.variables.get("action_index", "0"))
        if job.state == "done":
            index += 1
        self._record(self.store.finish(job.job_id, job.state, job.error, index, job.variables.snapshot(), delivery))
        return job

    def _record(self, d: Deferred) -> None:
        """A background write: keep it until written, log if it fails."""
        self._writes.add(d)

        def done(result: Any) -> None:
            self._writes.discard(d)
            if isinstance(result, Failure):
                log.error("spool write failed: {error}", error=result.getErrorMessage())

        d.addBoth(done)

    # Resume, retry, cancel ------------------------------------------------------

    def rebuild(self, stored: StoredJob) -> Job:
        """A L{Job} again, from its row; the sender is gone."""
        payload: Payload
        if stored.payload_path:
            payload = SpoolPayload.from_file(stored.payload_path)
        else:
            payload = Payload(stored.payload or b"")
            payload.close()
        job = Job(
            trigger=stored.trigger, payload=payload, peer_host=stored.peer_host, peer_port=stored.peer_port,
            job_id=stored.job_id, received_at=stored.received_at, encoding=stored.encoding,
            reply_channel=SenderGone(stored.job_id),
        )
        for name, value in stored.variables.items():
            if name not in ("data", "size"):
                job.variables[name] = value
        job.state = "queued"
        return job

    def _resume(self, stored: StoredJob) -> Deferred | None:
        if stored.job_id in self.running or stored.job_id in self._held:
            return None
        if stored.flow not in self.flows:
            error = f"flow {stored.flow!r} is no longer in the config"
            log.error("job {job_id} cannot resume: {error}", job_id=stored.job_id, error=error)
            self._record(self.store.finish(stored.job_id, "failed", error, stored.action_index, stored.variables, None))
            return None
        try:
            job = self.rebuild(stored)
        except OSError as e:
            error = f"payload lost: {e}"
            self._record(self.store.finish(stored.job_id, "failed", error, stored.action_index, stored.variables, None))
            return None
        log.info("job {job_id} ({trigger}) resumed at action {index} of flow {flow}",
                 job_id=job.job_id, trigger=job.trigger, index=stored.action_index, flow=stored.flow)
        return self._run(job, stored.flow, self.counters_for(job.trigger), stored.action_index)

    def resume_unfinished(self, stored_jobs: list[StoredJob]) -> None:
        """Start the unfinished jobs, in their original order."""
        resumed = sum(self._resume(stored) is not None for stored in stored_jobs)
        if resumed:
            log.info("spool: resumed {n} unfinished job(s)", n=resumed)
        self.ready = True
        held, self._held = self._held, {}
        for d in held.values():
            d.callback(None)

    @inlineCallbacks
    def retry(self, job_id: str):
        """Run a finished job again, from its first action not completed (a done job: from the start)."""
        if job_id in self.running:
            return f"job {job_id} is running"
        rows = yield self.store.load(job_id=job_id)
        if not rows:
            raise KeyError(f"no job {job_id} in the spool")
        stored = rows[0]
        if stored.state not in FINISHED:
            return f"job {job_id} is {stored.state}; it runs already"
        stored.action_index = 0 if stored.state == "done" else stored.action_index
        yield self.store.requeue(job_id, stored.action_index)
        stored.variables.pop("error", None)
        stored.variables.pop("failed_action", None)
        self._resume(stored)
        return f"job {job_id} ({stored.state}) queued again at action {stored.action_index}"

    @inlineCallbacks
    def cancel(self, job_id: str):
        """Stop a job before its next action (an action already running completes)."""
        if job_id in self.running:
            self._cancel.add(job_id)
            return f"job {job_id} cancelled: it stops before its next action"
        rows = yield self.store.load(job_id=job_id)
        if not rows:
            raise KeyError(f"no job {job_id} in the spool")
        stored = rows[0]
        if stored.state in FINISHED:
            return f"job {job_id} is already {stored.state}"
        yield self.store.finish(job_id, "cancelled", "cancelled by an operator", stored.action_index,
                                stored.variables, None)
        return f"job {job_id} cancelled"

    @inlineCallbacks
    def poll_requests(self):
        """Apply the CLI's retry/cancel requests (reopen the spool first if it failed)."""
        if self._polling or self.stopping:
            return
        self._polling = True
        try:
            if self.store.error:
                yield self.service.open_and_resume()
            else:
                yield self.apply_requests()
        finally:
            self._polling = False

    @inlineCallbacks
    def apply_requests(self):
        """Apply the requests the CLI wrote into the C{requests} table."""
        try:
            requests = yield self.store.take_requests()
            for request_id, job_id, action in requests:
                handler = {"retry": self.retry, "cancel": self.cancel}.get(action)
                try:
                    if handler is None:
                        raise ValueError(f"unknown request {action!r}")
                    result, ok = (yield handler(job_id)), True
                except Exception as e:
                    result, ok = (e.args[0] if isinstance(e, KeyError) else str(e)), False
                log.info("spool: request {id} {action} {job_id}: {result}", id=request_id,
                         action=action, job_id=job_id, result=result)
                yield self.store.answer(request_id, ok, result)
        except SpoolError as e:
            log.warn("spool: cannot read requests: {e}", e=e)

    @inlineCallbacks
    def purge(self):
        """One retention pass."""
        if self.store.error:
            return
        try:
            count, freed = yield self.store.purge(self.retention_days * 86400, int(self.retention_mb * (1 << 20)))
        except SpoolError as e:
            log.warn("spool: retention pass failed: {e}", e=e)
            return
        if count:
            log.info("spool: purged {count} finished job(s), {mb:.1f} MB", count=count, mb=freed / (1 << 20))

    def drain_writes(self) -> Deferred:
        """Fires once every background write queued so far is committed."""
        if not self._writes:
            return succeed(None)
        return DeferredList(list(self._writes), consumeErrors=True)

    def drain(self) -> Deferred:
        """
        Fires once every job in flight and every pending write is done; at
        once when the spool is closed (what still runs resumes at the next start).
        """
        pending = list(self._in_flight) + list(self._writes)
        if not pending or self.closed:
            return succeed(None)
        return DeferredList(pending, consumeErrors=True)


class _ResumableFlow:
    """A wrapped flow that starts at the action the sink says."""

    def __init__(self, flow: Flow, sink: SpoolSink) -> None:
        self.flow = flow
        self.name = flow.name
        self.sink = sink

    def run(self, job: Job, start_at: int = 0) -> Deferred:
        return self.flow.run(job, self.sink._start_at.get(job.job_id, start_at))


class SpoolService(Service):
    """The spool's lifetime: open and resume at start, poll, purge, flush at stop."""

    name = "spool"

    def __init__(self, sink: SpoolSink) -> None:
        self.sink = sink
        self._poll = LoopingCall(sink.poll_requests)
        self._retention = LoopingCall(sink.purge)
        self._poll.clock = self._retention.clock = sink.reactor
        self.stop_grace = STOP_GRACE
        self.started: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self.sink.stopping = self.sink.closed = False
        self.sink.store.start()
        #: Fires once the spool is open and unfinished jobs are resumed.
        self.started = self.open_and_resume()
        self._poll.start(POLL_INTERVAL, now=False)
        self._retention.start(RETENTION_INTERVAL, now=True)

    @inlineCallbacks
    def open_and_resume(self):
        store = self.sink.store
        try:
            yield store.open()
        except SpoolError as e:
            log.error("spool unavailable: {error}; new jobs are refused until it can be opened", error=e)
            return
        log.info("spool open: {path}", path=store.path)
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
        for call in (self._poll, self._retention):
            if call.running:
                call.stop()
        waited: Deferred = Deferred()
        sink.drain().addBoth(lambda _: waited.called or waited.callback(True))
        timeout = sink.reactor.callLater(self.stop_grace, lambda: waited.called or waited.callback(False))
        if not (yield waited):
            log.warn("spool: {n} job(s) still running after {s} s; they resume at the next start",
                     n=len(sink.running), s=self.stop_grace)
        if timeout.active():
            timeout.cancel()
        yield sink.store.stop()  # every write queued so far is committed first
        sink.closed = True
