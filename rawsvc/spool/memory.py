"""
L{MemoryStore}: an L{IJobStore} that keeps its jobs in memory, for tests
and demos.  It is B{not durable}: what it holds is gone with the process
(it survives a C{stop} and C{open} of the same object, nothing more), so a
service must never use it for jobs it acknowledges.

It was written from the docstrings of L{rawsvc.interfaces.IJobStore} alone,
to show they are enough to build an engine, and it passes
C{tests/store_contract.py} but for the tests that need a restart.  Every
write takes effect at once, so order and C{flush} come for free.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc.interfaces import IHoldStore, IJobStore
from rawsvc.spool.model import FINISHED, UNFINISHED, SpoolError, StoredJob

log = Logger(namespace="rawsvc.spool.memory")

_STOPPED = "the spool is stopped"


@implementer(IJobStore, IHoldStore)
class MemoryStore:
    """
    Jobs in a dict, in arrival order.  C{fail_open}: a reason every
    C{open} fails with (to test what a broken store does); C{clock}: the
    times recorded.
    """

    def __init__(self, clock: Callable[[], float] = time.time, fail_open: str | None = None) -> None:
        self.clock = clock
        self.fail_open = fail_open
        self.error: str | None = None
        self._open = False
        self._jobs: dict[str, StoredJob] = {}  # insertion order is arrival order
        self._seq = itertools.count(1)
        self._requests: dict[int, dict[str, Any]] = {}
        self._request_ids = itertools.count(1)

    # Lifetime ---------------------------------------------------------------

    def open(self) -> Deferred:
        if self.fail_open is not None:
            self.error = self.fail_open
            return fail(SpoolError(self.fail_open))
        self.error = None
        self._open = True
        return succeed("memory (not durable)")

    def stop(self) -> Deferred:
        self._open = False
        return succeed(None)

    # Writes -----------------------------------------------------------------

    def _closed(self) -> SpoolError | None:
        if self._open:
            return None
        return SpoolError(self.error or _STOPPED)

    def _write(self, fn: Callable[[], Any], background: bool = False) -> Deferred | None:
        """Apply C{fn} now; its result (or why not) as a Deferred, or logged for a background write."""
        error = self._closed()
        if error is None:
            try:
                result = fn()
            except SpoolError as e:
                error = e
        if background:
            if error is not None:
                log.error("spool write failed: {error}", error=error)
            return None
        return fail(error) if error is not None else succeed(result)

    def add(self, job: Any, flow: str, variables: dict[str, str] | None = None) -> Deferred:
        def add() -> None:
            if job.job_id in self._jobs:
                raise SpoolError(f"job {job.job_id} is stored already")
            payload = job.payload
            try:
                if payload.in_memory:
                    data = payload.bytes()
                else:
                    with open(payload.path, "rb") as f:
                        data = f.read()
            except OSError as e:
                raise SpoolError(f"cannot read the payload of job {job.job_id}: {e.strerror or e}") from None
            now = self.clock()
            self._jobs[job.job_id] = StoredJob(
                seq=next(self._seq), job_id=job.job_id, trigger=job.trigger, flow=flow, state="running",
                peer_host=job.peer_host, peer_port=job.peer_port, encoding=job.encoding, size=payload.size,
                received_at=job.received_at, action_index=0, attempt=1,
                variables=_without_index(variables if variables is not None else job.variables.snapshot()),
                payload=bytes(data), payload_path=None, queued_at=now, started_at=now, updated_at=now,
            )
            return None

        d = self._write(add)
        assert d is not None
        return d

    def _unfinished(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.state in UNFINISHED else None

    def progress(self, job_id: str, action_index: int, variables: dict[str, str], delivery: tuple | None,
                 background: bool = False) -> Deferred | None:
        def progress() -> None:
            job = self._unfinished(job_id)
            if job is not None:
                job.state, job.action_index, job.next_try = "running", action_index, None
                job.variables = _without_index(variables)
                _delivered(job, delivery)
                job.updated_at = self.clock()

        return self._write(progress, background)

    def started(self, job_id: str, action_index: int, background: bool = False) -> Deferred | None:
        def started() -> None:
            job = self._unfinished(job_id)
            if job is not None:
                now = self.clock()
                job.state, job.action_index, job.attempt = "running", action_index, job.attempt + 1
                job.started_at = job.started_at if job.started_at is not None else now
                job.updated_at = now

        return self._write(started, background)

    def finish(self, job_id: str, state: str, error: str | None, action_index: int,
               variables: dict[str, str], delivery: tuple | None, background: bool = False) -> Deferred | None:
        def finish() -> None:
            job = self._jobs.get(job_id)
            if job is not None:
                job.state, job.last_error, job.action_index, job.next_try = state, error, action_index, None
                job.variables = _without_index(variables)
                _delivered(job, delivery)
                job.updated_at = job.finished_at = self.clock()

        return self._write(finish, background)

    def waiting(self, job_id: str, attempt: int, error: str | None, next_try: float | None,
                state: str = "waiting") -> None:
        def waiting() -> None:
            job = self._unfinished(job_id)
            if job is None:
                return
            if next_try is not None and job.state in ("running", "waiting", "held"):
                job.state, job.delivery_attempt, job.last_error, job.next_try = state, attempt, error, next_try
                job.updated_at = self.clock()
            elif next_try is None and job.state in ("waiting", "held"):
                job.state, job.delivery_attempt, job.next_try = "running", attempt, None
                job.updated_at = self.clock()

        self._write(waiting, background=True)

    def held(self, job_id: str, attempt: int, reason: str, next_try: float) -> None:
        """The job's printer is not ready (pre-flight): C{held} with the reason, unfinished."""
        self.waiting(job_id, attempt, reason, next_try, "held")

    def flush(self) -> Deferred:
        return succeed(None)

    def requeue(self, job_id: str, action_index: int) -> Deferred:
        def requeue() -> None:
            job = self._jobs.get(job_id)
            if job is not None:
                job.state, job.action_index, job.finished_at = "queued", action_index, None
                job.updated_at = self.clock()

        d = self._write(requeue)
        assert d is not None
        return d

    # Reads ------------------------------------------------------------------

    def _read(self, fn: Callable[[], Any]) -> Deferred:
        error = self._closed()
        return fail(error) if error is not None else succeed(fn())

    def load(self, states: tuple[str, ...] = UNFINISHED, job_id: str | None = None) -> Deferred:
        def load() -> list[StoredJob]:
            if job_id is not None:
                return [_copy(self._jobs[job_id])] if job_id in self._jobs else []
            return [_copy(job) for job in self._jobs.values() if job.state in states]

        return self._read(load)

    def query(self, states: Iterable[str] = (), triggers: Iterable[str] = (), limit: int | None = 50,
              prefix: str | None = None) -> Deferred:
        states, triggers = tuple(states), tuple(triggers)

        def query() -> list[StoredJob]:
            found = []
            for job in reversed(self._jobs.values()):
                if states and job.state not in states or triggers and job.trigger not in triggers:
                    continue
                if prefix and not job.job_id.startswith(prefix):
                    continue
                found.append(_copy(job, payload=False))
                if limit and len(found) >= limit:
                    break
            return found

        return self._read(query)

    # Requests ---------------------------------------------------------------

    def request(self, job_id: str, action: str) -> Deferred:
        def request() -> int:
            request_id = next(self._request_ids)
            self._requests[request_id] = {"job_id": job_id, "action": action, "at": self.clock(), "answer": None}
            return request_id

        d = self._write(request)
        assert d is not None
        return d

    def take_requests(self) -> Deferred:
        return self._read(lambda: [(rid, r["job_id"], r["action"]) for rid, r in self._requests.items()
                                   if r["answer"] is None])

    def answer(self, request_id: int, ok: bool, result: str) -> Deferred:
        def answer() -> None:
            request = self._requests.get(request_id)
            if request is not None:
                request["answer"] = (bool(ok), result)
                request["at"] = self.clock()

        d = self._write(answer)
        assert d is not None
        return d

    def answer_of(self, request_id: int) -> Deferred:
        return self._read(lambda: self._requests[request_id]["answer"] if request_id in self._requests else None)

    # Retention --------------------------------------------------------------

    def purge(self, max_age: float, max_bytes: int) -> Deferred:
        def purge() -> tuple[int, int]:
            cutoff = self.clock() - max_age
            finished = sorted((job for job in self._jobs.values() if job.state in FINISHED),
                              key=lambda job: job.finished_at or 0.0)
            doomed = [job for job in finished if (job.finished_at or 0.0) < cutoff]
            total = sum(job.size for job in finished) - sum(job.size for job in doomed)
            gone = {job.job_id for job in doomed}
            for job in finished:
                if total <= max_bytes:
                    break
                if job.job_id not in gone:
                    doomed.append(job)
                    total -= job.size
            for job in doomed:
                del self._jobs[job.job_id]
            for rid in [rid for rid, r in self._requests.items() if r["answer"] is not None and r["at"] < cutoff]:
                del self._requests[rid]
            return len(doomed), sum(job.size for job in doomed)

        d = self._write(purge)
        assert d is not None
        return d


def _without_index(variables: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in variables.items() if k != "action_index"}


def _delivered(job: StoredJob, delivery: tuple | None) -> None:
    if delivery is not None:
        destination, written = delivery
        job.destination = destination
        job.bytes_delivered += written


def _copy(job: StoredJob, payload: bool = True) -> StoredJob:
    """A record of the caller's own (C{payload}: with the payload)."""
    return attrs.evolve(job, variables=dict(job.variables), payload=job.payload if payload else None)
