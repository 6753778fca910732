"""
Flows: a named, ordered list of actions run for one job.

An action that fails stops the flow, marks the job failed, sets C{${error}}
and runs the flow's C{on_error} actions.  Actions return Deferreds, so a
slow action never stalls other jobs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from rawsvc.errors import ActionError, Interrupted
from rawsvc.interfaces import IAction
from rawsvc.job import Job

log = Logger(namespace="rawsvc.flow")


def describe_failure(failure) -> str:
    """The message an operator reads for a failed action."""
    exc = failure.value
    if isinstance(exc, ActionError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@attrs.define(eq=False)
class Flow:
    """A named list of actions plus the actions to run when one fails."""

    name: str
    actions: Sequence[IAction]
    on_error: Sequence[IAction] = ()
    #: Log every finished job at info ([service] log_jobs); off by default
    #: because one line per job costs more than the job itself at thousands
    #: of jobs/s.  Job history lives in the spool, /jobs and `rawsvc jobs`;
    #: failures are always logged at warn.
    log_jobs: bool = False

    def run(self, job: Job, start_at: int = 0) -> Deferred:
        """
        Run the actions for C{job}, from action C{start_at}.  The returned
        Deferred fires with C{job} (state C{done} or C{failed}); it never
        fails for a failing action.

        Actions that return plain values run in a plain loop; from the first
        one that returns a Deferred (or fails) the rest runs in callbacks on
        that Deferred (L{_next}, L{_failed}), so a flow that waits again is
        a Deferred chained to the next one (C{called} but paused until it
        ends): take its result by a callback.
        """
        gate, job.gate = job.gate, None
        if gate is not None and not gate.called:
            # Held by its trigger (after the sink stored it): start once let go.
            return gate.addCallback(lambda _: self.run(job, start_at))
        job.state = "running"
        # Only a logged job reads its start (see _done).
        started = time.monotonic() if self.log_jobs else 0.0
        result = self._run_from(job, start_at, started)
        if isinstance(result, Deferred):
            return result
        return fail(result) if isinstance(result, Failure) else succeed(result)

    def _run_from(self, job: Job, start_at: int, started: float) -> Any:
        """
        Run actions C{start_at} onwards in a plain loop until one returns a
        Deferred: the job (ended), or a Deferred that fires with it.
        """
        actions = self.actions
        if start_at < len(actions):
            variables = job.variables
        for index in range(start_at, len(actions)):
            action = actions[index]
            variables["action_index"] = _INDEX[index] if index < len(_INDEX) else str(index)
            try:
                result = action.run(job)
            except Exception:
                return self._failed(Failure(), job, index, action, started)
            if isinstance(result, Deferred):
                # The rest runs in its callbacks: the Deferred the action gave
                # is the job's, so a flow that waits once (a reply's
                # hand-over) costs no Deferred of its own.
                return result.addCallbacks(self._next, self._failed, callbackArgs=(job, index, started),
                                           errbackArgs=(job, index, action, started))
            if isinstance(result, Failure):
                return self._failed(result, job, index, action, started)
        self._done(job, started)
        job.finished_at = time.time()
        return job

    def _next(self, _result: Any, job: Job, index: int, started: float) -> Any:
        """Action C{index} succeeded: run the ones after it (a Deferred returned here is chained)."""
        return self._run_from(job, index + 1, started)

    def _failed(self, failure: Failure, job: Job, index: int, action: IAction, started: float) -> Any:
        """Action C{index} failed: the job fails (or is interrupted) and C{on_error} runs."""
        if failure.check(Exception) is None:
            return failure  # not an error of the action (a BaseException): passed on
        message = describe_failure(failure)
        if not isinstance(failure.value, ActionError):
            log.failure(
                "action {index} ({type}) of flow {flow} crashed for job {job_id}",
                failure,
                index=index,
                type=action.type_name,
                flow=self.name,
                job_id=job.job_id,
            )
        return self._fail(job, index, action, message, isinstance(failure.value, Interrupted)).addCallback(
            _finished, job)

    def _done(self, job: Job, started: float) -> None:
        job.state = "done"
        if self.log_jobs:
            log.info(
                "job {job_id} done: flow {flow} in {ms:.1f} ms",
                job_id=job.job_id,
                flow=self.name,
                ms=(time.monotonic() - started) * 1000,
            )

    @inlineCallbacks
    def _fail(self, job: Job, index: int, action: IAction, message: str, interrupted: bool = False):
        job.state = "interrupted" if interrupted else "failed"
        job.error = message
        type_name = action.type_name
        log.emit(
            LogLevel.info if interrupted else LogLevel.warn,
            "job {job_id} {state} at action {index} ({type}) of flow {flow}: {error}",
            job_id=job.job_id,
            state=job.state,
            index=index,
            type=type_name,
            flow=self.name,
            error=message,
        )
        if interrupted:
            return  # not the job's fault: no on_error, it resumes later
        job.variables["error"] = message
        job.variables["failed_action"] = type_name
        for n, handler in enumerate(self.on_error):
            job.on_error_index = n
            try:
                yield maybeDeferred(handler.run, job)
            except Exception:
                log.warn(
                    "on_error action ({type}) of flow {flow} failed for job {job_id}: {error}",
                    type=handler.type_name,
                    flow=self.name,
                    job_id=job.job_id,
                    error=describe_failure(Failure()),
                )
        job.on_error_index = None


#: The C{action_index} variable of the first actions, made once.
_INDEX = tuple(str(i) for i in range(64))


def _finished(_: Any, job: Job) -> Job:
    job.finished_at = time.time()
    return job


def run_job(flow: Flow, job: Job) -> Deferred:
    """Feed one job to one flow without any socket (for tests and the CLI)."""
    return flow.run(job)
