"""
The virtual printer's state machine.

States: C{idle}, C{receiving} (a job's bytes are arriving), C{processing}
(a job's flow is running), C{error} (the last flow failed; the printer
still accepts the next job, which clears it) and C{paused} (the operator
paused the printer: no new connections until resumed).

Every status answer (PJL, C{~HS}, the UDP status, C{status()}) reads
L{PrinterState.state}, so they all tell the same truth.

Transitions are one explicit table.  A target of L{SETTLE} means "what the
work in hand says": receiving if a job is arriving, else processing if a
flow runs, else error if the last flow failed, else idle.  While paused,
work is still counted but the state stays C{paused} until C{resume}.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

IDLE = "idle"
RECEIVING = "receiving"
PROCESSING = "processing"
PAUSED = "paused"
ERROR = "error"
STATES = (IDLE, RECEIVING, PROCESSING, PAUSED, ERROR)

#: Target meaning: computed from the work in hand.
SETTLE = "settle"

_WORKING = (IDLE, RECEIVING, PROCESSING, ERROR)

#: (state, event) -> next state (or SETTLE).  Anything missing is a bug.
TRANSITIONS: dict[tuple[str, str], str] = {
    **{(s, "receive"): RECEIVING for s in _WORKING},
    (RECEIVING, "submit"): PROCESSING,
    # At a stop, clients that waited in the queue hand their jobs in while
    # another is served: a submit without a receive of its own.
    **{(s, "submit"): SETTLE for s in (IDLE, PROCESSING, ERROR)},
    (RECEIVING, "abandon"): SETTLE,
    (RECEIVING, "finish"): RECEIVING,  # an earlier job's flow ended meanwhile
    (PROCESSING, "finish"): SETTLE,
    (ERROR, "clear"): IDLE,
    **{(s, "clear"): s for s in (IDLE, RECEIVING, PROCESSING)},
    **{(s, "pause"): PAUSED for s in STATES},
    (PAUSED, "resume"): SETTLE,
    **{(PAUSED, e): PAUSED for e in ("receive", "submit", "abandon", "finish", "clear")},
    **{(s, "resume"): s for s in _WORKING},
}


class InvalidTransition(Exception):
    pass


@attrs.frozen
class PrinterSnapshot:
    """
    A virtual printer's state at one moment, as every status answer tells
    it (L{rawsvc.interfaces.IPrinterStatus}): read by the UDP status
    responder and the admin side without touching the printer's internals.
    """

    #: idle, receiving, processing, paused or error.
    state: str
    #: The printer trigger's name.
    printer: str
    #: The id of the job whose flow runs (the oldest), or "".
    job_id: str = ""
    #: Its PJL job name (C{@PJL JOB NAME}), or "".
    job_name: str = ""
    #: C{host:port} of the client being served, or "".
    client: str = ""
    #: Clients held waiting (C{busy = "queue"}).
    queued: int = 0
    #: A job is arriving now.
    receiving: bool = False
    #: Jobs whose flows run now.
    processing: int = 0
    #: Jobs whose flow succeeded, failed, since the start.
    jobs_ok: int = 0
    jobs_failed: int = 0
    #: The last failed flow's error ("" when none), and when (epoch s).
    last_error: str = ""
    last_error_at: float | None = None
    #: The operator paused the printer.
    paused: bool = False
    #: When the state last changed (epoch s).
    since: float = 0.0
    #: The simulated conditions it is in (paper_out, head_open, ribbon_out, paused, offline).
    conditions: tuple[str, ...] = ()
    #: Jobs taken but held by a condition (their flows wait).
    held: int = 0


class PrinterState:
    """One printer's state, the work behind it, and its last error."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.state = IDLE
        self.receiving = False
        self.processing: list[Any] = []  # jobs whose flows run, oldest first
        self.failed = False
        self.last_error = ""
        self.last_error_at: float | None = None
        self.jobs_ok = 0
        self.jobs_failed = 0
        self.since = clock()
        self._clock = clock
        self._observers: list[Callable[[str, str], None]] = []

    def observe(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """Call C{callback(old, new)} on every change; returns an unsubscriber."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def _settle(self) -> str:
        if self.receiving:
            return RECEIVING
        if self.processing:
            return PROCESSING
        return ERROR if self.failed else IDLE

    def _go(self, event: str) -> str:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise InvalidTransition(f"printer state {self.state!r} has no event {event!r}")
        if target == SETTLE:
            target = self._settle()
        old, self.state = self.state, target
        if old != target:
            self.since = self._clock()
            for callback in list(self._observers):
                callback(old, target)
        return target

    # Events -----------------------------------------------------------------

    def receive(self) -> str:
        """A job's first bytes arrived.  A new job clears a previous error."""
        self.receiving = True
        self.failed = False
        return self._go("receive")

    def abandon(self) -> str:
        """The job being received was dropped before it reached a flow."""
        self.receiving = False
        return self._go("abandon")

    def submit(self, job: Any) -> str:
        """The received job went to its flow."""
        self.receiving = False
        self.processing.append(job)
        return self._go("submit")

    def finish(self, job: Any, ok: bool, error: str = "") -> str:
        """A job's flow ended."""
        if job in self.processing:
            self.processing.remove(job)
        if ok:
            self.jobs_ok += 1
            self.failed = False
        else:
            self.jobs_failed += 1
            self.failed = True
            self.last_error = error or "flow failed"
            self.last_error_at = self._clock()
        return self._go("finish")

    def clear(self) -> str:
        """The operator cleared the error."""
        self.failed = False
        return self._go("clear")

    def pause(self) -> str:
        return self._go("pause")

    def touch(self) -> None:
        """Tell the observers the printer changed without a state change (a condition came or went)."""
        for callback in list(self._observers):
            callback(self.state, self.state)

    def resume(self) -> str:
        return self._go("resume")

    # Reading ----------------------------------------------------------------

    @property
    def current_job(self) -> Any:
        """The job whose flow runs (the oldest), or None."""
        return self.processing[0] if self.processing else None

    def as_dict(self) -> dict[str, Any]:
        job = self.current_job
        return {
            "state": self.state,
            "since": self.since,
            "receiving": self.receiving,
            "processing": len(self.processing),
            "current_job": getattr(job, "job_id", "") if job is not None else "",
            "jobs_ok": self.jobs_ok,
            "jobs_failed": self.jobs_failed,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
