"""
Jobs that come back from the spool: resumed after a restart, retried or
cancelled from the CLI (through its C{requests} table), purged by retention.

L{SpoolOperations} is the part of L{rawsvc.spool.sink.SpoolSink} that works
on stored jobs rather than new ones.  A resumed job has no sender to answer:
its reply channel is L{SenderGone}, so its C{reply} actions are skipped
(logged) and the rest of the flow runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc.interfaces import IJobStore, IReplyChannel
from rawsvc.job import Job, Payload
from rawsvc.spool.model import FINISHED, SpoolError, StoredJob

if TYPE_CHECKING:
    from rawsvc.interfaces import IDestinationPool
    from rawsvc.metrics import TriggerCounters
    from rawsvc.spool.service import SpoolService

log = Logger(namespace="rawsvc.spool")


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


class SpoolOperations:
    """Resume, retry, cancel, requests and retention; mixed into L{rawsvc.spool.sink.SpoolSink}."""

    # Provided by SpoolSink.
    store: IJobStore
    service: SpoolService
    flows: dict[str, Any]
    running: dict[str, Job]
    stopping: bool
    ready: bool
    retention_days: float
    retention_mb: float
    counters_for: Callable[[str], TriggerCounters | None]
    _run: Callable[..., Deferred]
    _held: dict[str, Deferred]
    _cancel: set[str]
    _polling: bool
    pool: IDestinationPool | None

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
        job.run = stored.run
        return job

    def _resume(self, stored: StoredJob) -> Deferred | None:
        if stored.job_id in self.running or stored.job_id in self._held:
            return None
        if stored.flow not in self.flows:
            error = f"flow {stored.flow!r} is no longer in the config"
            log.error("job {job_id} cannot resume: {error}", job_id=stored.job_id, error=error)
            self.store.finish(stored.job_id, "failed", error, stored.action_index, stored.variables, None,
                              background=True)
            return None
        try:
            job = self.rebuild(stored)
        except OSError as e:
            error = f"payload lost: {e}"
            self.store.finish(stored.job_id, "failed", error, stored.action_index, stored.variables, None,
                              background=True)
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
        """
        Run a finished job again, from its first action not completed (a
        done job: from the start); a job waiting to retry its delivery makes
        its next attempt now.
        """
        if job_id in self.running:
            if self.pool is not None and self.pool.retry_now(job_id):
                return f"job {job_id} was waiting to retry its delivery: next attempt now"
            return f"job {job_id} is running"
        rows = yield self.store.load(job_id=job_id)
        if not rows:
            raise KeyError(f"no job {job_id} in the spool")
        stored = rows[0]
        if stored.state not in FINISHED:
            return f"job {job_id} is {stored.state}; it runs already"
        stored.action_index = 0 if stored.state == "done" else stored.action_index
        yield self.store.requeue(job_id, stored.action_index)
        stored.run += 1  # (the spool's run, bumped by the requeue): this run's deliveries are new ones
        stored.variables.pop("error", None)
        stored.variables.pop("failed_action", None)
        self._resume(stored)
        return f"job {job_id} ({stored.state}) queued again at action {stored.action_index}"

    @inlineCallbacks
    def cancel(self, job_id: str):
        """
        Stop a job before its next action (an action already running
        completes), or now when its delivery waits to retry or for its turn.
        """
        if job_id in self.running:
            self._cancel.add(job_id)
            if self.pool is not None and self.pool.cancel(job_id):
                return f"job {job_id} cancelled; its printer's queue moves on"
            if (yield self._cancel_in_cluster(job_id)):
                return f"job {job_id} cancelled; its delivery left the cluster's queue"
            return f"job {job_id} cancelled: it stops before its next action"
        rows = yield self.store.load(job_id=job_id)
        if not rows:
            raise KeyError(f"no job {job_id} in the spool")
        stored = rows[0]
        if stored.state in FINISHED:
            return f"job {job_id} is already {stored.state}"
        yield self._cancel_in_cluster(job_id)  # no node sends what it queued
        yield self.store.finish(job_id, "cancelled", "cancelled by an operator", stored.action_index,
                                stored.variables, None)
        return f"job {job_id} cancelled"

    def _cancel_in_cluster(self, job_id: str) -> Deferred:
        """Cluster mode: C{job_id}'s delivery still queued in PostgreSQL ends cancelled; whether one did."""
        from rawsvc.client.destinations import DestinationPool

        cluster = self.pool.cluster if isinstance(self.pool, DestinationPool) else None
        if cluster is None:
            return succeed(False)
        return cluster.cancel(job_id)

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

